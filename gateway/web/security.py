"""Authentication and permission checks for the HTTP API and the pages.

A request is authenticated by a bearer token (scripts, central, tests) or by
a page session cookie (gateway.web.sessions); a cookie-authenticated request
that changes something must also carry the session's CSRF token.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth import PERMISSIONS, Principal, TokenRegistry
from gateway.web.sessions import COOKIE, CSRF_HEADER, SessionStore

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="a user's token from the site file")


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, if they hold ``permission``."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        registry: TokenRegistry = request.app.state.tokens
        principal = None if credentials is None else registry.authenticate(credentials.credentials)
        if principal is None and credentials is None:
            principal = _from_session(request)
        if principal is None:
            log.warning(
                "auth refused path=%s client=%s reason=%s",
                request.url.path,
                request.client.host if request.client else "?",
                "no token" if credentials is None else "unknown token",
            )
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not principal.may(permission):
            log.warning(
                "auth forbidden path=%s user=%s role=%s needs=%s",
                request.url.path,
                principal.name,
                principal.role,
                permission,
            )
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"role {principal.role!r} may not {permission}"
            )
        return principal

    return check


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _from_session(request: Request) -> Principal | None:
    """The principal of the page session, checking CSRF on state changes."""
    sessions: SessionStore | None = getattr(request.app.state, "sessions", None)
    if sessions is None:
        return None
    session = sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent.encode("utf-8"), session.csrf.encode("utf-8")):
            log.warning("csrf refused path=%s user=%s", request.url.path, session.principal.name)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "CSRF token missing or wrong")
    return session.principal
