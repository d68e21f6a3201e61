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

_ANNUNCIATED = ("unacknowledged", "acknowledged", "rtn_unacknowledged")


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
    before = conn.execute(  # a flood that began before the shift is still on at its start
        "SELECT payload FROM events WHERE kind = 'alarm.flood' AND received_at < ? "
        "ORDER BY seq DESC LIMIT 1",
        (lo,),
    ).fetchone()
    if before is not None and json.loads(before[0]).get("state") == "started":
        flood_since = start
    for kind, received_at, payload in rows:
        at = parse_rfc3339(received_at)
        data = json.loads(payload)
        if kind == "alarm.raised" and data.get("state") not in _ANNUNCIATED:
            continue  # raised while shelved, suppressed or out of service: not shown
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


def per_hour(conn: sqlite3.Connection, now: datetime, hours: int = 24) -> list[dict[str, Any]]:
    """Alarms raised in each of the last ``hours`` whole hours (for the screen's chart)."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    counts: Counter[int] = Counter()
    for (received_at,) in conn.execute(
        "SELECT received_at FROM events WHERE kind = 'alarm.raised' AND received_at >= ?",
        (to_rfc3339(start),),
    ):
        counts[int((parse_rfc3339(received_at) - start).total_seconds() // 3600)] += 1
    return [
        {"hour": to_rfc3339(start + timedelta(hours=h)), "alarms": counts.get(h, 0)}
        for h in range(hours)
    ]
