"""Bearer-token authentication and permission checks for the HTTP API."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth import PERMISSIONS, Principal, TokenRegistry

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
