"""Browser sessions for the guard-room pages: log in with your own name and token.

The API's bearer tokens stay the credential; a page login turns one into an
HttpOnly, SameSite=Strict session cookie so the token never sits in the
browser's JavaScript. Each session carries a CSRF token that every state-
changing request must echo in ``X-CSRF-Token`` (double submit), and expires
after a shift (12 h) or on logout. Failed logins are rate limited per user
and per address, because a guessed token opens gates.

Sessions live in memory: a restart of the gateway logs everyone out, which
the pages handle by returning to the login form.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from gateway.auth import Principal, TokenRegistry

COOKIE = "gw_session"
CSRF_HEADER = "X-CSRF-Token"
LIFETIME_S = 12 * 3600
MAX_FAILURES = 5  # per user name
MAX_FAILURES_PER_ADDRESS = 20  # a shared wall screen: one guard's typos must not lock out all
FAILURE_WINDOW_S = 300.0


@dataclass(frozen=True)
class Session:
    id: str
    principal: Principal
    csrf: str
    expires: float


class LoginRefused(Exception):
    """Wrong name or token, or too many failures; the message is safe to show."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SessionStore:
    """Live sessions and recent login failures."""

    def __init__(self, tokens: TokenRegistry, lifetime_s: float = LIFETIME_S) -> None:
        self._tokens = tokens
        self._lifetime = lifetime_s
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque[float]] = {}

    def login(self, name: str, token: str, client: str) -> Session:
        now = time.monotonic()
        keys = (f"user:{name}", f"addr:{client}")
        for key, limit in zip(keys, (MAX_FAILURES, MAX_FAILURES_PER_ADDRESS), strict=True):
            recent = self._recent(key, now)
            if len(recent) >= limit:
                wait = int(FAILURE_WINDOW_S - (now - recent[0])) + 1
                raise LoginRefused(
                    "登录失败次数过多,请稍后再试 too many failed logins", retry_after_s=wait
                )
        principal = self._tokens.authenticate(token)
        if principal is None or not hmac.compare_digest(
            principal.name.encode("utf-8"),
            name.encode("utf-8"),  # names may be Chinese
        ):
            for key in keys:
                self._recent(key, now).append(now)
            raise LoginRefused("用户名或口令错误 wrong name or token")
        if principal.role == "central":
            raise LoginRefused(
                "该账号供中心系统使用,不能登录岗亭页面 this account is for the central system"
            )
        for key in keys:
            self._failures.pop(key, None)
        session = Session(
            secrets.token_urlsafe(32), principal, secrets.token_urlsafe(24), now + self._lifetime
        )
        self._sessions[session.id] = session
        self._expire(now)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None or session.expires <= time.monotonic():
            self._sessions.pop(session_id or "", None)
            return None
        return session

    def logout(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)

    def _recent(self, key: str, now: float) -> deque[float]:
        recent = self._failures.setdefault(key, deque())
        while recent and now - recent[0] > FAILURE_WINDOW_S:
            recent.popleft()
        return recent

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if s.expires <= now]:
            del self._sessions[sid]
