"""Alarm-system KPIs per shift (ISA-18.2 / EEMUA 191), from the journal.

Computed from the ``alarm.raised`` / ``alarm.flood`` / ``alarm.chattering``
events of a shift, so they survive restarts and can be recomputed for any
past shift. Targets (../shared/research/ALARMS.md): < 1 alarm per 10 min
steady, time in flood < 1 %, top-10 share small, no stale or chattering alarms.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import parse_rfc3339, to_rfc3339


def shift_window(
    now: datetime, starts: Sequence[str], zone: ZoneInfo, which: str = "current"
) -> tuple[datetime, datetime]:
    """The [start, end) of the current (or previous) shift, shift starts in site time."""
    local = now.astimezone(zone)
    marks = sorted(time.fromisoformat(s) for s in starts)
    candidates = [
        datetime.combine(local.date() + timedelta(days=d), m, zone)
        for d in (-2, -1, 0, 1)
        for m in marks
    ]
    index = max(i for i, c in enumerate(candidates) if c <= local)
    if which == "previous":
        index -= 1
    return candidates[index], candidates[index + 1]


def shift_kpis(
    conn: sqlite3.Connection, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    """Alarm counts and rates for [start, end) (capped at ``now`` for the current shift)."""
    upto = min(end, now)
    lo, hi = to_rfc3339(start.astimezone(UTC)), to_rfc3339(upto.astimezone(UTC))
    rows = conn.execute(
        "SELECT kind, received_at, payload FROM events WHERE kind IN "
        "('alarm.raised', 'alarm.flood', 'alarm.chattering') "
        "AND received_at >= ? AND received_at < ? ORDER BY seq",
        (lo, hi),
    ).fetchall()
    raised: Counter[str] = Counter()
    buckets: Counter[int] = Counter()
    chattering: set[str] = set()
    by_priority: Counter[str] = Counter()
    flood_s = 0.0
    flood_since: datetime | None = None
    for kind, received_at, payload in rows:
        at = parse_rfc3339(received_at)
        data = json.loads(payload)
        if kind == "alarm.raised":
            raised[data["alarm_id"]] += 1
            by_priority[data["priority"]] += 1
            buckets[int((at - start).total_seconds() // 600)] += 1
        elif kind == "alarm.chattering":
            chattering.add(data["alarm_id"])
        elif data.get("state") == "started":
            flood_since = at
        elif flood_since is not None:
            flood_s += (at - flood_since).total_seconds()
            flood_since = None
    if flood_since is not None:
        flood_s += (upto - flood_since).total_seconds()
    total = sum(raised.values())
    span_s = max(1.0, (upto - start).total_seconds())
    top10 = sum(count for _, count in raised.most_common(10))
    return {
        "from": to_rfc3339(start),
        "to": to_rfc3339(end),
        "alarms": total,
        "by_priority": dict(by_priority),
        "per_10_min": round(total / (span_s / 600), 2),
        "max_per_10_min": max(buckets.values(), default=0),
        "time_in_flood_s": round(flood_s),
        "time_in_flood_pct": round(100 * flood_s / span_s, 2),
        "top10_share_pct": round(100 * top10 / total, 1) if total else 0.0,
        "top10": [{"alarm_id": a, "count": c} for a, c in raised.most_common(10)],
        "chattering": len(chattering),
    }
