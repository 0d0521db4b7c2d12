"""API errors: the ``{"error", "detail"}`` body, plain validation texts, handlers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
import redis.cluster
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.api.cache import Busy
from workers.api.guard import request_id
from workers.api.openapi import allowed_methods

log = logging.getLogger("liftstream.api")


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": text}`` with an HTTP status."""

    def __init__(self, status: int, error: str, detail: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(status: int, error: str, detail: str,
                    headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status,
                        headers=dict(headers or {}))


def plain_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems: list[dict[str, Any]] = []
    texts: list[str] = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ())]
        where = loc[0] if loc else "request"
        name = ".".join(loc[1:])
        if where == "body":
            label = f"request body{' field ' + repr(name) if name else ''}"
        elif where in ("query", "path", "header"):
            label = f"{where} parameter {name!r}"
        else:
            label = ".".join(loc) or "request"
        msg = str(e.get("msg", "invalid value"))
        got = e.get("input")
        text = f"{label}: {msg}"
        if where in ("query", "path") and got is not None:
            shown = repr(got)
            text += f" (got {shown if len(shown) <= 80 else shown[:76] + '…' + shown[-1]})"
        problems.append({"location": where, "field": name or None, "message": msg,
                         "text": text})
        texts.append(text)
    return "; ".join(texts) or "invalid request", problems


def install_error_handlers(app: FastAPI) -> None:
    """Every error answered as ``{"error", "detail"}`` (unexpected ones: guard.ErrorShield)."""
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, problems = plain_validation(exc)
        return error_response(422, "invalid_request", detail, problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        if exc.status_code == 405:  # every method of the path, not only one route's
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            return error_response(422, "invalid_request",
                                   "request body: not a JSON document (UTF-8 text expected)")
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                               detail, headers)

    # Unexpected exceptions: workers.api.guard.ErrorShield (generic 500 with a request id).

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("request %s: Redis error answering %s: %s", request_id(request.scope),
                    request.url.path, exc)
        return error_response(503, "unavailable", "Redis is unavailable; retry later",
                               {"Retry-After": "1"})

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return error_response(503, "busy", "too many result computations in progress; "
                                            f"retry in {exc.retry_after} s",
                               {"Retry-After": str(exc.retry_after)})
