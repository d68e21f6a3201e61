"""Masking a resident's personal data for screens and for central.

客户档案管理制度 (../shared/DOMAIN.md, ``002_…``): a resident's contacts are
confidential. The guard who takes a report needs to know *someone* can be
called back, not the number; the screen shows ``张*`` and ``138****5678``.
Free text a guard types (a description) sometimes carries a phone number:
it is moved to the contact and masked in the text before the text is stored.
"""

from __future__ import annotations

import re

_PHONE = re.compile(r"(?<!\d)(\+?\d[\d -]{5,}\d)(?!\d)")


def mask_name(name: str) -> str:
    """The first character and a star per remaining one (at most three): ``张*``, ``L***``."""
    name = name.strip()
    if not name:
        return ""
    return name[0] + "*" * min(max(len(name) - 1, 1), 3)


def mask_phone(phone: str) -> str:
    """Keep the first three and the last four digits: ``138****5678``; short numbers keep two."""
    digits = re.sub(r"\D", "", phone)
    if len(digits) >= 11:
        return digits[:3] + "****" + digits[-4:]
    if len(digits) >= 5:
        return "*" * (len(digits) - 2) + digits[-2:]
    return "*" * len(digits)


def find_phones(text: str) -> list[str]:
    """Phone-like runs of seven or more digits in free text, digits only."""
    found = (re.sub(r"\D", "", m.group(1)) for m in _PHONE.finditer(text))
    return [digits for digits in found if len(digits) >= 7]


def scrub_phones(text: str) -> str:
    """Free text with every phone-like run of seven or more digits masked."""

    def hide(match: re.Match[str]) -> str:
        raw = match.group(1)
        digits = re.sub(r"\D", "", raw)
        return mask_phone(digits) if len(digits) >= 7 else raw

    return _PHONE.sub(hide, text)
