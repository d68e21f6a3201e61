"""Turns committed ``meter.reading`` events into outbox items, one per counter.

The feeder tails the journal by ``seq`` and stores its position in the same
commit as the items it queued, so every reading is queued exactly once no
matter where the gateway stops. Producers (polls, estimates, manual entries)
only write events and never need to know sync exists
(../shared/DESIGN.md: parts meet through events in the journal).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import Any

from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.meters.readings import KIND
from gateway.sync.central_state import get_cursor, set_cursor
from gateway.sync.outbox import METER_READINGS, NewItem, enqueue

log = logging.getLogger(__name__)

CURSOR = "feeder.meter-readings"
CHUNK = 5000  # events per feeding commit
_SOURCES = {"modbus", "mqtt", "serial", "manual"}


def reading_items(meter: str, payload: Mapping[str, Any]) -> Iterator[NewItem]:
    """The contract's reading items for one ``meter.reading`` event."""
    read_at = payload["read_at"]
    read_at_utc = to_rfc3339(parse_rfc3339(read_at).astimezone(UTC))
    source = payload["source"]
    # An estimate is computed from the meter's own readings; the contract knows it
    # by quality "estimated" and its flags, and by the transport the data came over.
    source = source if source in _SOURCES else "modbus"
    period = payload.get("billing_period")
    for reading in payload["readings"]:
        item = {
            "reading_id": reading["reading_id"],
            "meter_id": meter,
            "utility": payload["utility"],
            "register": reading["register"],
            "value": reading["value"],
            "unit": reading["unit"],
            "read_at": read_at,
            "quality": reading["quality"],
            "source": source,
            "billing_period": period,
            "flags": reading["flags"],
        }
        yield NewItem(
            METER_READINGS,
            reading["reading_id"],
            json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
            keep=period is not None,
            meter=meter,
            read_at=read_at_utc,
        )


def feed(conn: sqlite3.Connection, now: str, limit: int = CHUNK) -> int:
    """Queue the readings of up to ``limit`` new events; return events consumed."""
    cursor = int(get_cursor(conn, CURSOR, "0"))
    rows = conn.execute(
        "SELECT seq, device, payload FROM events WHERE kind = ? AND seq > ? ORDER BY seq LIMIT ?",
        (KIND, cursor, limit),
    ).fetchall()
    if not rows:
        return 0
    items: list[NewItem] = []
    for seq, device, payload in rows:
        try:
            items.extend(reading_items(device, json.loads(payload)))
        except (KeyError, TypeError, ValueError) as exc:
            # Cannot happen for events our own meter code wrote; if it does, say
            # so loudly once and move on rather than block every later reading.
            log.error(
                "sync feeder: unreadable meter.reading seq=%d device=%s error=%r", seq, device, exc
            )
    enqueue(conn, items, now)
    set_cursor(conn, CURSOR, str(rows[-1][0]))
    return len(rows)
