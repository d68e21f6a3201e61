"""The outbox's rules on a real journal file: queue, revisions, settle,
dead letters and re-queue, thinning, and the feeder from meter readings."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from gateway.journal.store import Journal
from gateway.meters.readings import CounterReading, reading_event, reading_id
from gateway.sync import outbox
from gateway.sync.feeder import feed
from gateway.sync.outbox import (
    INCIDENTS,
    METER_READINGS,
    ItemResult,
    NewItem,
    RequeueRefused,
)
from gateway.sync.side import incident_item
from tests.harness.journal import with_journal

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = "2026-11-23T00:00:00.000+00:00"
T = TypeVar("T")


def write(path: Path, fn: Callable[[sqlite3.Connection], T]) -> T:
    return with_journal(path, lambda j: j.write(fn))


def reading(meter: str, at: datetime, value: float, period: str | None = None) -> Any:
    rid = reading_id(meter, "import_kwh", at, SHANGHAI)
    return reading_event(
        meter=meter,
        utility="electricity",
        read_at=at,
        zone=SHANGHAI,
        counters=[CounterReading("import_kwh", value, "kWh", "good", (), rid)],
        instant={"voltage": 230.1},
        source="modbus",
        billing_period=period,
    )


def incident(revision: int, state: str = "open") -> dict[str, Any]:
    return {
        "incident_id": "inc-1",
        "revision": revision,
        "type": "fire_alarm",
        "priority": "P1",
        "title": "火警 B3",
        "location": "B3",
        "state": state,
        "opened_at": "2026-11-23T08:00:00+08:00",
        "respond_by": "2026-11-23T08:10:00+08:00",
        "updated_at": "2026-11-23T08:00:00+08:00",
        "handler": None,
        "supervisor": None,
        "timeline": [],
    }


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_feeder_queues_each_counter_once_in_the_contract_form(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    at = datetime(2026, 11, 23, 8, 0, tzinfo=SHANGHAI)

    async def body(journal: Journal) -> list[int]:
        await journal.submit(reading("B1-0101-E", at, 12345.67))
        await journal.submit(reading("B1-0101-E", at, 12345.67))  # the same poll again
        first = await journal.write(lambda c: feed(c, NOW))
        second = await journal.write(lambda c: feed(c, NOW))
        return [first, second]

    assert with_journal(db, body) == [1, 0]
    [(item_id, body_text, keep, read_at)] = rows(
        db, "SELECT item_id, body, keep, read_at FROM outbox"
    )
    assert item_id == "B1-0101-E:import_kwh:2026-11-23T08:00:00+08:00"
    assert json.loads(body_text) == {
        "reading_id": item_id,
        "meter_id": "B1-0101-E",
        "utility": "electricity",
        "register": "import_kwh",
        "value": 12345.67,
        "unit": "kWh",
        "read_at": "2026-11-23T08:00:00+08:00",
        "quality": "good",
        "source": "modbus",
        "billing_period": None,
        "flags": [],
    }
    assert keep == 0
    assert read_at == "2026-11-23T00:00:00.000+00:00"
    # the feeder's position survives a restart: nothing is queued twice
    assert write(db, lambda c: feed(c, NOW)) == 0


def test_feeder_maps_an_estimate_to_the_contract_vocabulary(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    boundary = datetime(2026, 12, 1, tzinfo=SHANGHAI)
    rid = reading_id("M1", "import_kwh", boundary, SHANGHAI)
    event = reading_event(
        meter="M1",
        utility="electricity",
        read_at=boundary,
        zone=SHANGHAI,
        counters=[CounterReading("import_kwh", 10.5, "kWh", "estimated", ("interpolated",), rid)],
        instant={},
        source="estimate",
        billing_period="2026-11",
    )
    with_journal(db, lambda j: j.submit(event))
    write(db, lambda c: feed(c, NOW))
    [(body_text, keep)] = rows(db, "SELECT body, keep FROM outbox")
    item = json.loads(body_text)
    assert (item["source"], item["quality"], item["billing_period"]) == (
        "modbus",
        "estimated",
        "2026-11",
    )
    assert item["flags"] == ["interpolated"]
    assert keep == 1  # a period close is never thinned


def test_a_newer_incident_revision_replaces_the_queued_one_but_never_the_reverse(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    write(db, lambda c: outbox.enqueue(c, [incident_item(incident(2))], NOW))
    write(db, lambda c: outbox.enqueue(c, [incident_item(incident(1))], NOW))
    assert rows(db, "SELECT revision FROM outbox") == [(2,)]
    write(db, lambda c: outbox.enqueue(c, [incident_item(incident(3, "acknowledged"))], NOW))
    [(revision, body_text)] = rows(db, "SELECT revision, body FROM outbox")
    assert revision == 3 and json.loads(body_text)["state"] == "acknowledged"


def test_settling_revision_2_keeps_revision_3_queued_meanwhile(tmp_path: Path) -> None:
    db = tmp_path / "j.db"

    async def body(journal: Journal) -> None:
        await journal.write(lambda c: outbox.enqueue(c, [incident_item(incident(2))], NOW))
        [sent] = await journal.query(lambda c: outbox.next_batch(c, INCIDENTS, 0, 10, 10**6))
        # while rev 2 is on the wire, the guard acknowledges: rev 3 is queued
        await journal.write(lambda c: outbox.enqueue(c, [incident_item(incident(3))], NOW))
        answer = [ItemResult("inc-1", "accepted", ticket_no="T-2026-000001")]
        await journal.write(lambda c: outbox.settle(c, INCIDENTS, [sent], answer, NOW))

    with_journal(db, body)
    assert rows(db, "SELECT revision FROM outbox") == [(3,)]
    assert rows(db, "SELECT ticket_no FROM central_tickets") == [("T-2026-000001",)]


def test_settle_removes_answered_items_keeps_unanswered_and_dead_letters_rejected(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    items = [
        NewItem(METER_READINGS, f"r{i}", json.dumps({"reading_id": f"r{i}"})) for i in range(4)
    ]

    async def body(journal: Journal) -> dict[str, int]:
        await journal.write(lambda c: outbox.enqueue(c, items, NOW))
        batch = await journal.query(lambda c: outbox.next_batch(c, METER_READINGS, 0, 10, 10**6))
        answer = [
            ItemResult("r0", "accepted"),
            ItemResult("r1", "duplicate"),
            ItemResult("r2", "rejected", "value must be >= 0"),
            ItemResult("nobody", "accepted"),  # not in the batch: ignored
        ]
        return await journal.write(lambda c: outbox.settle(c, METER_READINGS, batch, answer, NOW))

    counts = with_journal(db, body)
    assert counts == {"accepted": 1, "duplicate": 1, "stale": 0, "rejected": 1}
    assert rows(db, "SELECT item_id FROM outbox") == [("r3",)]
    assert rows(db, "SELECT item_id, error FROM dead_letters") == [("r2", "value must be >= 0")]
    assert rows(db, "SELECT accepted, duplicate, rejected FROM sync_streams") == [(1, 1, 1)]


def test_next_batch_respects_the_byte_limit_but_always_sends_one(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    items = [NewItem(METER_READINGS, f"r{i}", "x" * 100) for i in range(10)]
    write(db, lambda c: outbox.enqueue(c, items, NOW))

    def batches(c: sqlite3.Connection) -> tuple[int, int, int]:
        return (
            len(outbox.next_batch(c, METER_READINGS, 0, 1000, 350)),
            len(outbox.next_batch(c, METER_READINGS, 0, 1000, 50)),
            len(outbox.next_batch(c, METER_READINGS, 0, 4, 10**6)),
        )

    assert with_journal(db, lambda j: j.query(batches)) == (3, 1, 4)


def test_requeue_sends_the_correction_once_and_is_refused_twice(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    item = NewItem(METER_READINGS, "r1", '{"reading_id":"r1","value":-1}')

    async def body(journal: Journal) -> None:
        await journal.write(lambda c: outbox.enqueue(c, [item], NOW))
        batch = await journal.query(lambda c: outbox.next_batch(c, METER_READINGS, 0, 9, 10**6))
        answer = [ItemResult("r1", "rejected", "value must be >= 0")]
        await journal.write(lambda c: outbox.settle(c, METER_READINGS, batch, answer, NOW))
        [letter] = await journal.query(outbox.dead_letters)
        fixed = '{"reading_id":"r1","value":1}'
        await journal.write(lambda c: outbox.requeue(c, letter.id, fixed, "sup-1", NOW))
        with pytest.raises(RequeueRefused, match="already re-queued by sup-1"):
            await journal.write(lambda c: outbox.requeue(c, letter.id, None, "sup-1", NOW))
        with pytest.raises(RequeueRefused, match="does not exist"):
            await journal.write(lambda c: outbox.requeue(c, 999, None, "sup-1", NOW))
        assert await journal.query(outbox.dead_letters) == []
        assert (
            len(await journal.query(lambda c: outbox.dead_letters(c, include_requeued=True))) == 1
        )

    with_journal(db, body)
    assert rows(db, "SELECT body FROM outbox") == [('{"reading_id":"r1","value":1}',)]


def test_thinning_drops_only_raw_readings_of_periods_central_has_closed(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    boundary = datetime(2026, 11, 1, tzinfo=SHANGHAI)
    before = [reading("M1", boundary - timedelta(hours=h), 100 - h) for h in range(1, 6)]
    after = [reading("M1", boundary + timedelta(hours=h), 100 + h) for h in range(1, 4)]
    other = [reading("M2", boundary - timedelta(hours=h), 50 - h) for h in range(1, 3)]
    close = reading("M1", boundary, 100, period="2026-10")

    async def body(journal: Journal) -> tuple[int, int]:
        for event in [*before, close, *after, *other]:
            await journal.submit(event)
        await journal.write(lambda c: feed(c, NOW))
        # Nothing is thinnable until central holds the period close.
        assert await journal.write(lambda c: outbox.thin(c, 10**9)) == (0, 0)
        batch = await journal.query(lambda c: outbox.next_batch(c, METER_READINGS, 0, 99, 10**6))
        [sent] = [i for i in batch if i.item_id.endswith("T00:00:00+08:00")]
        answer = [ItemResult(sent.item_id, "accepted")]
        await journal.write(lambda c: outbox.settle(c, METER_READINGS, [sent], answer, NOW))
        items, freed = await journal.write(lambda c: outbox.thin(c, 10**9))
        return items, freed

    items, freed = with_journal(db, body)
    assert items == 5 and freed > 0
    left = {json.loads(b)["read_at"] for (b,) in rows(db, "SELECT body FROM outbox")}
    # M1 after the boundary and M2 (no close delivered) are all still queued
    assert len(left) == 3 + 2
    assert rows(db, "SELECT thinned FROM sync_streams WHERE stream = 'meter-readings'") == [(5,)]
    # and the thinned readings are still in the journal's own history
    assert rows(db, "SELECT count(*) FROM events WHERE kind = 'meter.reading'") == [(11,)]


def test_backlog_reports_items_bytes_and_oldest(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    items = [NewItem(METER_READINGS, f"r{i}", "x" * 10) for i in range(3)]
    write(db, lambda c: outbox.enqueue(c, items, "2026-11-22T00:00:00.000+00:00"))
    write(db, lambda c: outbox.enqueue(c, [incident_item(incident(1))], NOW))
    figures = with_journal(db, lambda j: j.query(outbox.backlog))
    assert figures[METER_READINGS] == outbox.Backlog(3, 30, "2026-11-22T00:00:00.000+00:00")
    assert figures[INCIDENTS].items == 1


def test_backlog_budget_alarms_at_80_percent_thins_at_100_and_never_drops_closes(
    tmp_path: Path,
) -> None:
    from gateway.clock import Clock
    from gateway.sync.budget import BacklogWatch

    db = tmp_path / "j.db"
    boundary = datetime(2026, 11, 1, tzinfo=SHANGHAI)
    raw = [reading("M1", boundary - timedelta(hours=h), 1000 - h) for h in range(40, 0, -1)]
    close = reading("M1", boundary, 1000, period="2026-10")
    later = [reading("M1", boundary + timedelta(hours=h), 1000 + h) for h in range(1, 11)]

    async def body(journal: Journal) -> list[str]:
        await journal.submit_many([*raw, close])
        await journal.write(lambda c: feed(c, NOW))
        sizes = await journal.query(outbox.backlog)
        per_item = sizes[METER_READINGS].bytes // 41
        # budget: just over the 41 queued now, so 50 more readings overrun it
        watch = BacklogWatch(journal, Clock(), budget_bytes=per_item * 48)
        await watch.check()
        levels = [watch.level]
        # central takes the period close (and nothing else) …
        batch = await journal.query(lambda c: outbox.next_batch(c, METER_READINGS, 0, 99, 10**6))
        [sent] = [i for i in batch if i.keep]
        answer = [ItemResult(sent.item_id, "accepted")]
        await journal.write(lambda c: outbox.settle(c, METER_READINGS, [sent], answer, NOW))
        # … then the WAN stays down and readings keep coming
        await journal.submit_many(later)
        await journal.write(lambda c: feed(c, NOW))
        await watch.check()
        levels.append(watch.level)
        more = [reading("M1", boundary + timedelta(hours=h), 1000 + h) for h in range(11, 40)]
        await journal.submit_many(more)
        await journal.write(lambda c: feed(c, NOW))
        await watch.check()
        levels.append(watch.level)
        assert watch.used <= 0.9 + 1e-9 or watch.level == "full"
        return levels

    levels = with_journal(db, body)
    assert levels == ["high", "high", "high"]
    kinds = [
        k for (k,) in rows(db, "SELECT kind FROM events WHERE kind LIKE 'sync.%' ORDER BY seq")
    ]
    assert kinds[0] == "sync.backlog_high"
    assert "sync.thinned" in kinds
    # only the oldest raw readings before the delivered close went, down to 90 %;
    # everything after the close (its period not closed yet) is still queued
    left = sorted(json.loads(b)["read_at"] for (b,) in rows(db, "SELECT body FROM outbox"))
    after = [at for at in left if at > "2026-11-01T00:00:00+08:00"]
    before = [at for at in left if at < "2026-11-01T00:00:00+08:00"]
    assert len(after) == 10 + 29
    assert before == [
        "2026-10-31T20:00:00+08:00",
        "2026-10-31T21:00:00+08:00",
        "2026-10-31T22:00:00+08:00",
        "2026-10-31T23:00:00+08:00",
    ]
    assert len(left) <= 48 * 0.9


def test_a_backlog_of_closes_alone_is_never_thinned_but_reported_full(tmp_path: Path) -> None:
    from gateway.clock import Clock
    from gateway.sync.budget import BacklogWatch

    db = tmp_path / "j.db"
    closes = [
        reading(f"M{n}", datetime(2026, 11, 1, tzinfo=SHANGHAI), 10.0 + n, period="2026-10")
        for n in range(20)
    ]

    async def body(journal: Journal) -> str:
        await journal.submit_many(closes)
        await journal.write(lambda c: feed(c, NOW))
        watch = BacklogWatch(journal, Clock(), budget_bytes=100)
        await watch.check()
        return watch.level

    assert with_journal(db, body) == "full"
    assert rows(db, "SELECT count(*) FROM outbox") == [(20,)]
    kinds = [k for (k,) in rows(db, "SELECT kind FROM events WHERE kind LIKE 'sync.%'")]
    assert kinds == ["sync.backlog_full"]
