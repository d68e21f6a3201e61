"""Value types the API shares: times and journal positions that are always usable.

A time the client sends is made UTC at the edge (the journal stores UTC). The
year 0001 with a positive offset, or 9999 with a negative one, has no UTC form:
it is refused as invalid input (422), not left to fail deep inside (a 500).
A journal sequence number fits SQLite's 64-bit integer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field


def _as_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]
"""An RFC 3339 time with an offset, converted to UTC."""

MAX_SEQ = 2**63 - 1
Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
"""A journal sequence number (a paging cursor)."""
