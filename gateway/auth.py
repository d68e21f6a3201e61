"""Who may do what: bearer tokens per user, four roles, named permissions.

Tokens are long random strings handed to each person; the site file stores
only their SHA-256 (``gateway hash-token``), so a copied config file grants
nothing. Roles (../shared/DESIGN.md, invariant 8):

* ``guard``      — view, acknowledge alarms, scan checkpoints
* ``supervisor`` — guard + shelve alarms, open gates/barriers remotely, edit readings
* ``admin``      — supervisor + configuration and manual event intake
* ``central``    — read-only export for the central office
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import User
from gateway.config_base import Role

PERMISSIONS: dict[str, frozenset[Role]] = {
    "events.read": frozenset({"guard", "supervisor", "admin", "central"}),
    "events.submit": frozenset({"admin"}),
    "audit.read": frozenset({"supervisor", "admin"}),
    "health.detail": frozenset({"guard", "supervisor", "admin", "central"}),
    "devices.read": frozenset({"guard", "supervisor", "admin", "central"}),
    "meters.read": frozenset({"guard", "supervisor", "admin", "central"}),
    "billing.export": frozenset({"supervisor", "admin", "central"}),
    "readings.edit": frozenset({"supervisor", "admin"}),
    "outputs.switch": frozenset({"supervisor", "admin"}),
    "sync.read": frozenset({"guard", "supervisor", "admin", "central"}),
    "sync.requeue": frozenset({"supervisor", "admin"}),
    "access.command": frozenset({"supervisor", "admin"}),
    "parking.recount": frozenset({"guard", "supervisor", "admin"}),
    "alarms.read": frozenset({"guard", "supervisor", "admin", "central"}),
    "alarms.acknowledge": frozenset({"guard", "supervisor", "admin"}),
    "alarms.shelve": frozenset({"supervisor", "admin"}),
    "alarms.service": frozenset({"supervisor", "admin"}),
    "outages.plan": frozenset({"supervisor", "admin"}),
    "handover.read": frozenset({"guard", "supervisor", "admin"}),
    "patrol.scan": frozenset({"guard", "supervisor", "admin"}),
    "patrol.manage": frozenset({"supervisor", "admin"}),
    "patrol.report": frozenset({"guard", "supervisor", "admin"}),
    "handover.write": frozenset({"guard", "supervisor", "admin"}),
    "reports.read": frozenset({"guard", "supervisor", "admin"}),
    "reports.write": frozenset({"guard", "supervisor", "admin"}),
    "reports.close": frozenset({"supervisor", "admin"}),
    "reports.contact": frozenset({"supervisor", "admin"}),
}
"""Permission name → roles holding it. Endpoints ask for a permission, never a role."""


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored in the site file for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """The person (or system) behind a request; every action is attributed to one."""

    name: str
    role: Role
    display_name: str | None = None

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


class TokenRegistry:
    """Maps presented tokens to principals by their hash."""

    def __init__(self, users: Iterable[User]) -> None:
        self._by_hash = {u.token_sha256: Principal(u.name, u.role, u.display_name) for u in users}

    def authenticate(self, token: str) -> Principal | None:
        """The principal for a token, or None when the token is unknown."""
        return self._by_hash.get(hash_token(token))
