"""Hourly use from cumulative counters: today against yesterday, for the screen.

A counter's use in an hour is its last reading in that hour minus the last
reading before it; an hour without a reading is unknown (None), not zero, so
a silent meter never draws as "nothing used".
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.meters.readings import KIND


def hourly_use(
    conn: sqlite3.Connection,
    meters: Sequence[str],
    register: str,
    start: datetime,
    hours: int,
) -> list[float | None]:
    """Use per hour from ``start`` over ``meters`` (summed), from their readings."""
    end = start + timedelta(hours=hours)
    totals: list[float | None] = [None] * hours
    for meter in meters:
        last: list[float | None] = [None] * (hours + 1)  # [0]: before start
        rows = conn.execute(
            "SELECT received_at, payload FROM events WHERE device = ? AND kind = ? "
            "AND received_at >= ? AND received_at < ? ORDER BY seq",
            (
                meter,
                KIND,
                to_rfc3339((start - timedelta(hours=1)).astimezone(UTC)),
                to_rfc3339(end.astimezone(UTC)),
            ),
        )
        for received_at, payload in rows:
            value = next(
                (
                    r["value"]
                    for r in json.loads(payload).get("readings", [])
                    if r.get("register") == register and r.get("quality") != "suspect"
                ),
                None,
            )
            if value is None:
                continue
            slot = int((parse_rfc3339(received_at) - start).total_seconds() // 3600) + 1
            last[max(0, slot)] = float(value)
        previous = last[0]
        for hour in range(hours):
            current = last[hour + 1]
            if current is not None and previous is not None:
                totals[hour] = round((totals[hour] or 0.0) + max(0.0, current - previous), 3)
            if current is not None:
                previous = current
    return totals
