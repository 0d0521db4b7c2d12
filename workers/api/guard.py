"""ASGI guards of the query API against hostile or careless callers.

* :class:`ErrorShield` (outermost): gives every request an id (``X-Request-ID`` on every
  answer) and turns an unexpected exception into a generic 500 JSON body naming that id; the
  exception and its traceback go to the log only, never to the caller.
* :class:`BodyLimit`: reads at most ``max_bytes`` of a request body, counting what arrives (a
  missing or wrong ``Content-Length`` does not help), and answers 413 beyond.
* :class:`RedactTokens`: a logging filter for uvicorn's access log that replaces the value of
  ``token`` query parameters (the dashboard's ``/?token=...``) by ``***``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_HEADER", "BodyLimit", "ErrorShield", "RedactTokens", "redact_tokens",
           "request_id"]

log = logging.getLogger("liftstream.api")

REQUEST_ID_HEADER = "X-Request-ID"
_SCOPE_KEY = "liftstream.request_id"
_TOKEN_PARAM = re.compile(r"((?:^|[?&;])(?:access_)?token=)[^&;#\s\"]*", re.IGNORECASE)


def request_id(scope: Scope) -> str:
    """This request's id (set by :class:`ErrorShield`; ``-`` outside it)."""
    return str(scope.get(_SCOPE_KEY, "-"))


def json_error(status: int, error: str, detail: str, **extra: Any) -> bytes:
    """The API's error body ``{"error", "detail", ...}`` encoded."""
    return json.dumps({"error": error, "detail": detail, **extra}).encode()


async def send_json(send: Send, status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]]) -> None:
    """A complete JSON answer through raw ASGI messages."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class ErrorShield:
    """Request ids on every answer; unexpected exceptions become a generic 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = secrets.token_hex(8)
        scope[_SCOPE_KEY] = rid
        header = (REQUEST_ID_HEADER.lower().encode(), rid.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s: error answering %s %s", rid, scope.get("method"),
                          scope.get("path"))
            if started:  # too late for a clean answer; the server closes the connection
                raise
            body = json_error(500, "internal_error",
                              f"internal error; the server log has the details under request "
                              f"id {rid}", request_id=rid)
            await send_json(send_with_id, 500, body, [])


class BodyLimit:
    """Request bodies beyond ``max_bytes`` get 413 before the application sees them.

    The body (at most ``max_bytes``) is read first and replayed to the application, so the
    limit holds whatever ``Content-Length`` says or whether it is sent at all.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, setting: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = json_error(413, "payload_too_large",
                          f"request body larger than {self.max_bytes} bytes (the limit, set "
                          f"by {self.setting})", limit=self.max_bytes)
        await send_json(send, 413, body, [(b"connection", b"close")])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def redact_tokens(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced by ``***``."""
    return _TOKEN_PARAM.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """Redacts ``token`` query parameters in a log record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_tokens(a) if isinstance(a, str) else a
                                for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_tokens(v) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        return True
