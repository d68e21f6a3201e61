"""Car-park occupancy per lot and vehicle class, from barrier events.

Each ``vehicle.entry`` / ``vehicle.exit`` moves the count of its lot and
class, in the same commit as the event — and only if the event was new, so a
QoS 1 redelivery counts once. Lots nest: a lot ``inside`` another (the garage
reached through the site's entrance barriers) holds cars that also passed
the outer lot's barriers, so the outer lot's own occupancy is its count
minus its inner lots'. "Full" is per class: full for temporary cars is not
full for monthly holders.

Counts never go below zero (an exit without an entry, e.g. after a missed
read, is flagged ``parking.anomaly``) and going over capacity is flagged too
(cars do park where they should not); a guard's recount sets the truth and
is audited.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.config import ParkingLot
from gateway.events import Event
from gateway.journal.store import insert_events

VEHICLE_KINDS = frozenset({"vehicle.entry", "vehicle.exit"})
UNKNOWN = "unknown"


def _count(conn: sqlite3.Connection, lot: str, vehicle_class: str) -> int:
    row = conn.execute(
        "SELECT count FROM occupancy WHERE lot = ? AND class = ?", (lot, vehicle_class)
    ).fetchone()
    return int(row[0]) if row else 0


def _set(conn: sqlite3.Connection, lot: str, vehicle_class: str, count: int) -> None:
    conn.execute(
        "INSERT INTO occupancy (lot, class, count) VALUES (?, ?, ?) "
        "ON CONFLICT (lot, class) DO UPDATE SET count = excluded.count",
        (lot, vehicle_class, count),
    )


def record_vehicle_events(
    conn: sqlite3.Connection, events: Sequence[Event], lots: Sequence[ParkingLot]
) -> None:
    """Insert events (inside ``Journal.write``) and count the new vehicle ones."""
    capacity = {lot.id: lot for lot in lots}
    flags: list[Event] = []
    for event in events:
        before = conn.total_changes
        insert_events(conn, [event])
        new = conn.total_changes > before
        lot_id = event.payload.get("lot")
        if not new or event.kind not in VEHICLE_KINDS or lot_id not in capacity:
            continue
        vehicle_class = str(event.payload.get("vehicle_class") or UNKNOWN)
        count = _count(conn, lot_id, vehicle_class)
        if event.kind == "vehicle.entry":
            count += 1
            lot = capacity[lot_id]
            limit = lot.classes.get(vehicle_class)  # type: ignore[call-overload]
            total = _total(conn, lot_id) + 1
            if (limit is not None and count > limit) or total > lot.spaces:
                flags.append(_anomaly(event, lot_id, vehicle_class, "over_capacity", count))
        elif count == 0:
            flags.append(_anomaly(event, lot_id, vehicle_class, "exit_without_entry", 0))
            continue
        else:
            count -= 1
        _set(conn, lot_id, vehicle_class, count)
    insert_events(conn, flags)


def _total(conn: sqlite3.Connection, lot: str) -> int:
    row = conn.execute("SELECT coalesce(sum(count), 0) FROM occupancy WHERE lot = ?", (lot,))
    return int(row.fetchone()[0])


def _anomaly(event: Event, lot: str, vehicle_class: str, reason: str, count: int) -> Event:
    return Event(
        "parking.anomaly",
        event.device,
        {
            "lot": lot,
            "vehicle_class": vehicle_class,
            "reason": reason,
            "count": count,
            "event_id": event.id,
            "plate": event.payload.get("plate"),
        },
    )


def recount(conn: sqlite3.Connection, lot: str, counts: dict[str, int]) -> dict[str, int]:
    """A guard's count replaces the lot's counts (classes not given become 0);
    returns the counts it replaced."""
    before = {
        row[0]: int(row[1])
        for row in conn.execute("SELECT class, count FROM occupancy WHERE lot = ?", (lot,))
    }
    conn.execute("DELETE FROM occupancy WHERE lot = ?", (lot,))
    for vehicle_class, count in counts.items():
        _set(conn, lot, vehicle_class, count)
    return before


def occupancy(conn: sqlite3.Connection, lots: Sequence[ParkingLot]) -> list[dict[str, Any]]:
    """Per lot: cars by class (inner lots' cars taken out), capacity, free, full."""
    counts: dict[str, dict[str, int]] = {}
    for lot, vehicle_class, count in conn.execute("SELECT lot, class, count FROM occupancy"):
        counts.setdefault(lot, {})[vehicle_class] = int(count)
    out = []
    for lot in lots:
        own = dict(counts.get(lot.id, {}))
        for inner in (other for other in lots if other.inside == lot.id):
            for vehicle_class, n in counts.get(inner.id, {}).items():
                own[vehicle_class] = own.get(vehicle_class, 0) - n
        classes = {}
        for vehicle_class, capacity in lot.classes.items():
            cars = max(0, own.get(vehicle_class, 0))
            classes[vehicle_class] = {
                "cars": cars,
                "spaces": capacity,
                "free": max(0, capacity - cars),
                "full": cars >= capacity,
            }
        cars = max(0, sum(own.values()))
        out.append(
            {
                "lot": lot.id,
                "name": lot.name,
                "inside": lot.inside,
                "cars": cars,
                "spaces": lot.spaces,
                "free": max(0, lot.spaces - cars),
                "full": cars >= lot.spaces,
                "classes": classes,
                "other_cars": {k: v for k, v in own.items() if k not in lot.classes and v},
            }
        )
    return out


def cars_by_hour(
    conn: sqlite3.Connection, lots: Sequence[ParkingLot], start: datetime, hours: int
) -> list[dict[str, Any]]:
    """Cars in each lot at the end of each hour since ``start``, worked back from
    the lot's count now through the entries and exits since (its own barriers)."""
    now_counts: dict[str, int] = {}
    for lot, count in conn.execute("SELECT lot, sum(count) FROM occupancy GROUP BY lot"):
        now_counts[lot] = int(count)
    flows: dict[str, list[int]] = {lot.id: [0] * hours for lot in lots}
    after: dict[str, int] = {lot.id: 0 for lot in lots}  # net change after the window
    since = to_rfc3339(start.astimezone(UTC))
    for kind, received_at, payload in conn.execute(
        "SELECT kind, received_at, payload FROM events WHERE kind IN (?, ?) AND received_at >= ?",
        (*sorted(VEHICLE_KINDS), since),
    ):
        lot = json.loads(payload).get("lot")
        if lot not in flows:
            continue
        step = 1 if kind == "vehicle.entry" else -1
        hour = int((parse_rfc3339(received_at) - start).total_seconds() // 3600)
        if hour < hours:
            flows[lot][hour] += step
        else:
            after[lot] += step
    out = []
    for lot in lots:
        cars = now_counts.get(lot.id, 0) - after[lot.id]
        series: list[int] = [0] * hours
        for hour in range(hours - 1, -1, -1):
            series[hour] = max(0, cars)
            cars -= flows[lot.id][hour]
        out.append({"lot": lot.id, "name": lot.name, "spaces": lot.spaces, "cars": series})
    return out
