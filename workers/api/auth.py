"""Bearer-token authentication of the API: tokens by scope, read/admin dependencies."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workers.api.errors import ApiError
from workers.settings import Settings


@dataclass(frozen=True)
class Auth:
    """Accepted bearer tokens by scope; ``open`` disables authentication (``--insecure``)."""

    read_tokens: frozenset[str] = frozenset()
    admin_tokens: frozenset[str] = frozenset()
    open: bool = False

    def scope_of(self, token: str) -> Literal["admin", "read"] | None:
        """``admin``, ``read`` or ``None`` for an unknown token (constant-time comparisons)."""
        found: Literal["admin", "read"] | None = None
        for t in self.admin_tokens:
            if hmac.compare_digest(t.encode(), token.encode()):
                found = "admin"
        for t in self.read_tokens:
            if hmac.compare_digest(t.encode(), token.encode()) and found is None:
                found = "read"
        return found


def resolve_auth(settings: Settings, insecure: bool = False) -> tuple[Auth, str | None]:
    """The API's tokens; with none configured, a generated admin token (returned second)."""
    if insecure:
        return Auth(open=True), None
    read, admin = frozenset(settings.api_read_tokens), frozenset(settings.api_admin_tokens)
    if read or admin:
        return Auth(read, admin), None
    token = secrets.token_urlsafe(24)
    return Auth(frozenset(), frozenset({token})), token



_bearer = HTTPBearer(auto_error=False, description="A read or admin token from the settings.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _scope(request: Request, creds: HTTPAuthorizationCredentials | None) -> str:
    auth: Auth = request.app.state.api.auth
    if auth.open:
        return "admin"
    challenge = {"WWW-Authenticate": 'Bearer realm="liftstream"'}
    if creds is None:
        raise ApiError(401, "unauthorized",
                       "missing bearer token: send 'Authorization: Bearer <token>' (the "
                       "dashboard takes it as ?token=...)", challenge)
    scope = auth.scope_of(creds.credentials)
    if scope is None:
        raise ApiError(401, "unauthorized", "invalid bearer token", challenge)
    return scope


async def require_read(request: Request, creds: Credentials) -> str:
    """Dependency: a read or admin token (async: FastAPI runs sync dependencies in threads)."""
    return _scope(request, creds)


async def require_admin(request: Request, creds: Credentials) -> str:
    """Dependency: an admin token."""
    scope = _scope(request, creds)
    if scope != "admin":
        raise ApiError(403, "forbidden", "this endpoint needs a token with the admin scope; "
                                         "the given token has the read scope")
    return scope


Read = Annotated[str, Depends(require_read)]
Admin = Annotated[str, Depends(require_admin)]
