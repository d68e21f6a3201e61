"""The screen's charts from the journal: cars per hour worked back from the
count now, and a building's power use per hour from its main meter's counter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.config import ParkingLot
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.meters.usage import hourly_use
from gateway.parking import cars_by_hour, record_vehicle_events
from tests.harness.journal import with_journal

MIDNIGHT = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)  # 00:00 on the 23rd in Shanghai
LOT = ParkingLot(id="garage", name="地下车库", spaces=10)


def at(hours: float) -> datetime:
    return MIDNIGHT + timedelta(hours=hours)


def test_cars_by_hour_is_worked_back_from_the_count_now(tmp_path: Path) -> None:
    moves = [("vehicle.entry", 0.5), ("vehicle.entry", 1.2), ("vehicle.entry", 1.7),
             ("vehicle.exit", 2.5), ("vehicle.entry", 3.1)]  # fmt: skip
    events = [
        Event(kind, "BAR-1", {"lot": "garage", "vehicle_class": "monthly"}, received_at=at(h))
        for kind, h in moves
    ]

    async def body(journal: Journal) -> list[dict]:
        await journal.write(lambda conn: record_vehicle_events(conn, events, [LOT]))
        return await journal.query(lambda conn: cars_by_hour(conn, [LOT], MIDNIGHT, 3))

    [garage] = with_journal(tmp_path / "j.db", body)
    # the 03:06 entry is after the window: the series ends at 02:59 with 2 cars
    assert garage["cars"] == [1, 3, 2]


def test_hourly_use_is_the_counter_difference_and_a_silent_hour_is_unknown(tmp_path: Path) -> None:
    def reading(hours: float, kwh: float) -> Event:
        payload = {"readings": [{"register": "import_kwh", "value": kwh, "quality": "good"}]}
        return Event("meter.reading", "B01-MAIN", payload, received_at=at(hours))

    events = [reading(-0.1, 1000.0), reading(0.5, 1004.0), reading(0.9, 1010.0),
              reading(2.5, 1030.0)]  # fmt: skip

    async def body(journal: Journal) -> list[float | None]:
        await journal.submit_many(events)
        return await journal.query(
            lambda conn: hourly_use(conn, ["B01-MAIN"], "import_kwh", MIDNIGHT, 4)
        )

    assert with_journal(tmp_path / "j.db", body) == [10.0, None, 20.0, None]
