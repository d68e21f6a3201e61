"""Meter readings as journal events, with the central API's stable ids.

One poll of a meter is one ``meter.reading`` event: its cumulative counters
(the billing evidence, each with quality, flags and a ``reading_id``) and its
instantaneous values (voltage, power, flow: for outage detection and screens).
The ``reading_id`` is ``meter:register:read_at`` with ``read_at`` in site time,
as in ../shared/contracts/central-api.md, so the same physical reading has the
same id on every retry and restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from gateway.events import Event

KIND = "meter.reading"


@dataclass(frozen=True)
class CounterReading:
    """One cumulative register's reading, judged by VEE."""

    register: str
    value: float
    unit: str
    quality: str
    flags: tuple[str, ...]
    reading_id: str


@lru_cache(maxsize=256)
def site_time(moment: datetime, zone: ZoneInfo) -> str:
    """RFC 3339 in the site's zone, to the second (the contract's form).

    Cached: one poll stamps its event id, its ``read_at`` and each counter's
    ``reading_id`` with the same moment (equal instants give equal text in
    any one zone, so a hit is always right)."""
    return moment.astimezone(zone).isoformat(timespec="seconds")


def reading_id(meter: str, register: str, read_at: datetime, zone: ZoneInfo) -> str:
    return f"{meter}:{register}:{site_time(read_at, zone)}"


def reading_event(
    *,
    meter: str,
    utility: str,
    read_at: datetime,
    zone: ZoneInfo,
    counters: Sequence[CounterReading],
    instant: Mapping[str, float],
    source: str,
    billing_period: str | None = None,
    device_time: datetime | None = None,
    received_at: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Event:
    """The journal event for one poll (or one estimate or manual entry)."""
    payload: dict[str, Any] = {
        "utility": utility,
        "source": source,
        "read_at": site_time(read_at, zone),
        "billing_period": billing_period,
        "readings": [
            {
                "register": c.register,
                "value": c.value,
                "unit": c.unit,
                "quality": c.quality,
                "flags": list(c.flags),
                "reading_id": c.reading_id,
            }
            for c in counters
        ],
        "instant": dict(instant),
    }
    if extra:
        payload.update(extra)
    return Event(
        KIND,
        meter,
        payload,
        device_time=device_time,
        received_at=read_at if received_at is None else received_at,
        id=f"{meter}@{site_time(read_at, zone)}",
    )
