"""Masking a person's card number and plate for roles that need not see them.

A resident's comings and goings are personal data (../shared/DOMAIN.md, records
and confidentiality): guards and central see ``****5678`` and ``皖A***45``, enough
to tell cards and cars apart, not to copy a card or follow a car; supervisors
and admins see them in full. The device's own message (``raw``, kept beside the
normalised event) repeats both, so it is left out for the others.
"""

from __future__ import annotations

from typing import Any

from gateway.auth import Principal

_SEE_IN_FULL = frozenset({"supervisor", "admin"})


def mask_card(card: str) -> str:
    """``12345678`` → ``****5678``: enough to tell cards apart, not to copy one."""
    return "*" * max(0, len(card) - 4) + card[-4:]


def mask_plate(plate: str) -> str:
    """``皖A12345`` → ``皖A***45``: province and city, the last two characters."""
    if len(plate) <= 4:
        return plate[:1] + "*" * (len(plate) - 1)
    return plate[:2] + "*" * (len(plate) - 4) + plate[-2:]


def sees_in_full(principal: Principal) -> bool:
    return principal.role in _SEE_IN_FULL


def masked(payload: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """The payload as this principal may see it (a copy when anything is hidden)."""
    if sees_in_full(principal):
        return payload
    shown = dict(payload)
    if isinstance(shown.get("card"), str):
        shown["card"] = mask_card(shown["card"])
    if isinstance(shown.get("plate"), str):
        shown["plate"] = mask_plate(shown["plate"])
    shown.pop("raw", None)  # the device's own message repeats what was just masked
    return shown
