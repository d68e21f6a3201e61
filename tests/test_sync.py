"""Sync against the real reference receiver, through faults.

Every fault test ends the same way: every item delivered, none missing, none
counted twice by the receiver (each reading stored once, whatever number of
copies arrived).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.clock import Clock
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.meters.readings import CounterReading, reading_event, reading_id
from gateway.sync import outbox
from gateway.sync.http import HttpTransport
from gateway.sync.outbox import INCIDENTS, METER_READINGS, NewItem
from gateway.sync.pulls import CentralPulls
from gateway.sync.receiver import CentralReceiver
from gateway.sync.sender import SenderSettings, SyncSender
from gateway.sync.side import incident_item
from tests.harness.journal import with_journal

SITE = "site-a"
TOKEN = "site-a-token"
SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 20, tzinfo=SHANGHAI)
NOW = "2026-11-23T00:00:00.000+00:00"

FAST = SenderSettings(
    backoff_initial_s=0.05, backoff_max_s=0.4, auth_backoff_s=0.5, idle_poll_s=0.05
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[CentralReceiver]:
    with CentralReceiver(tmp_path / "central.db", sites={SITE: TOKEN}) as central:
        yield central


def reading_events(count: int, meters: int = 50) -> list[Event]:
    """``count`` hourly readings spread over ``meters`` meters."""
    events = []
    for n in range(count):
        meter, hour = f"B{n % meters:02d}-E", n // meters
        at = START + timedelta(hours=hour)
        rid = reading_id(meter, "import_kwh", at, SHANGHAI)
        events.append(
            reading_event(
                meter=meter,
                utility="electricity",
                read_at=at,
                zone=SHANGHAI,
                counters=[CounterReading("import_kwh", 100.0 + hour, "kWh", "good", (), rid)],
                instant={},
                source="modbus",
            )
        )
    return events


def _undelivered(conn: sqlite3.Connection) -> int:
    """Items queued plus meter readings the feeder has not reached yet."""
    queued = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    cursor = conn.execute(
        "SELECT coalesce(max(value), 0) FROM sync_cursors WHERE name = 'feeder.meter-readings'"
    ).fetchone()[0]
    unfed = conn.execute(
        "SELECT count(*) FROM events WHERE kind = 'meter.reading' AND seq > ?", (int(cursor),)
    ).fetchone()[0]
    return int(queued) + int(unfed)


async def outbox_count(journal: Journal) -> int:
    return await journal.query(_undelivered)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        await asyncio.sleep(0.05)


async def drain(
    journal: Journal,
    url: str,
    *,
    timeout: float = 30.0,
    settings: SenderSettings = FAST,
    read_timeout_s: float = 5.0,
    token: str = TOKEN,
    signing_secret: str | None = None,
    during: Callable[[SyncSender], Awaitable[None]] | None = None,
) -> SyncSender:
    """Run a sender until the outbox is empty (after ``during``, if given)."""
    transport = HttpTransport(
        url,
        SITE,
        token,
        signing_secret=signing_secret,
        connect_timeout_s=1.0,
        read_timeout_s=read_timeout_s,
    )
    sender = SyncSender(journal, transport, Clock(), settings)
    task = asyncio.create_task(sender.run())
    try:
        if during is not None:
            await during(sender)

        async def empty() -> bool:
            if task.done():
                task.result()  # a crashed sender fails the test with its error
            return await outbox_count(journal) == 0

        await wait_for(empty, timeout)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.close()
        if sender.transport is not transport:  # swapped by the test
            await sender.transport.close()
    return sender


def assert_each_stored_once(central: CentralReceiver, events: list[Event]) -> None:
    expected = {r["reading_id"] for e in events for r in e.payload["readings"]}
    stored = central.readings(SITE)
    ids = [r["reading_id"] for r in stored]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected, f"missing {len(expected - set(ids))}"
    assert central.stats()["readings"]["stored"] == len(expected)


def sync_events(db: Path, kind: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT payload FROM events WHERE kind = ? ORDER BY seq", (kind,))
        return [json.loads(p) for (p,) in rows]
    finally:
        conn.close()


# ---- delivery ------------------------------------------------------------------


def test_readings_reach_central_in_batches_of_at_most_1000(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    events = reading_events(2500)

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)
        await drain(journal, receiver.base_url)

    with_journal(tmp_path / "j.db", body)
    assert_each_stored_once(receiver, events)
    stats = receiver.stats()
    assert stats["requests"]["by_status"] == {"200": 3}
    stored = receiver.readings(SITE)[0]
    assert stored["quality"] == "good" and stored["source"] == "modbus"


def test_signed_requests_are_accepted_and_a_wrong_secret_raises_the_auth_alarm(
    tmp_path: Path,
) -> None:
    events = reading_events(10)
    central = CentralReceiver(
        tmp_path / "central.db", sites={SITE: TOKEN}, signing_secrets={SITE: "s3cret"}
    )
    with central:

        async def wrong(journal: Journal) -> None:
            await journal.submit_many(events)

            async def alarm_then_fix(sender: SyncSender) -> None:
                await wait_for(lambda: _state_is(sender, "auth_failed"), 5)
                sender.transport = HttpTransport(
                    central.base_url, SITE, TOKEN, signing_secret="s3cret"
                )

            await drain(journal, central.base_url, signing_secret="wrong", during=alarm_then_fix)

        with_journal(tmp_path / "j.db", wrong)
        assert_each_stored_once(central, events)
    assert [e["stream"] for e in sync_events(tmp_path / "j.db", "sync.auth_failed")] == [
        METER_READINGS
    ]
    assert len(sync_events(tmp_path / "j.db", "sync.auth_restored")) == 1


async def _state_is(sender: SyncSender, state: str) -> bool:
    return sender.state == state


# ---- faults --------------------------------------------------------------------


def test_central_down_for_a_while_then_back(tmp_path: Path, receiver: CentralReceiver) -> None:
    events = reading_events(1500)

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)
        receiver.down_for(1.5)
        await drain(journal, receiver.base_url)

    with_journal(tmp_path / "j.db", body)
    assert_each_stored_once(receiver, events)


def test_twenty_percent_random_500s(tmp_path: Path, receiver: CentralReceiver) -> None:
    events = reading_events(3000)
    receiver.set_faults(error_rate=0.2, seed=7)
    settings = SenderSettings(
        max_items=200, backoff_initial_s=0.02, backoff_max_s=0.1, idle_poll_s=0.05
    )

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)
        await drain(journal, receiver.base_url, settings=settings)

    with_journal(tmp_path / "j.db", body)
    assert_each_stored_once(receiver, events)
    assert receiver.stats()["requests"]["by_status"]["500"] >= 1


def test_a_reset_after_central_stored_the_batch_is_answered_duplicate_and_counted_once(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    events = reading_events(2000)
    receiver.set_faults(reset_after_store_rate=0.5, seed=3)
    settings = SenderSettings(max_items=250, backoff_initial_s=0.02, backoff_max_s=0.1)

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)
        await drain(journal, receiver.base_url, settings=settings)

    with_journal(tmp_path / "j.db", body)
    assert_each_stored_once(receiver, events)
    readings = receiver.stats()["readings"]
    assert readings["duplicate"] > 0  # the resent copies were answered duplicate…
    assert readings["stored"] == 2000  # …and counted once
    assert max(r["deliveries"] for r in receiver.readings(SITE)) >= 2


def test_a_silent_outage_then_a_reset_loses_nothing(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    """The incumbent loses 19 % here (../shared/research/PEERS.md): a send
    that got no answer is not delivered, however long ago it went out."""
    events = reading_events(3000)
    settings = SenderSettings(max_items=300, backoff_initial_s=0.05, backoff_max_s=0.2)

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)

        async def outage(sender: SyncSender) -> None:
            await wait_for(lambda: _delivered_some(receiver), 10)
            receiver.set_faults(silent=True)
            await asyncio.sleep(1.5)  # several sends time out into the void
            receiver.down_for(0.5)  # then the WAN resets every connection
            receiver.set_faults(silent=False)

        await drain(
            journal, receiver.base_url, settings=settings, read_timeout_s=0.4, during=outage
        )

    with_journal(tmp_path / "j.db", body)
    assert_each_stored_once(receiver, events)


async def _delivered_some(central: CentralReceiver) -> bool:
    return bool(central.stats()["readings"]["stored"])


def test_a_429_storm_is_met_with_patience_not_a_retry_storm(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    events = reading_events(100)
    receiver.set_faults(throttle_rate=1.0, retry_after_s=1)

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)

        async def storm(sender: SyncSender) -> None:
            await asyncio.sleep(2.5)
            receiver.set_faults(throttle_rate=0.0)

        await drain(journal, receiver.base_url, during=storm)

    with_journal(tmp_path / "j.db", body)
    assert_each_stored_once(receiver, events)
    # Retry-After: 1 over 2.5 s allows at most 3 attempts (backoff alone would allow ~10)
    assert receiver.stats()["requests"]["by_status"]["429"] <= 3


def test_401_raises_one_alarm_backs_off_and_recovers(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    events = reading_events(50)
    receiver.set_faults(unauthorized=True)

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)

        async def revoked(sender: SyncSender) -> None:
            await asyncio.sleep(2.0)
            assert sender.state == "auth_failed"
            receiver.set_faults(unauthorized=False)

        await drain(journal, receiver.base_url, during=revoked)

    with_journal(tmp_path / "j.db", body)
    assert_each_stored_once(receiver, events)
    assert receiver.stats()["requests"]["by_status"]["401"] <= 5  # 0.5 s apart, not a storm
    assert len(sync_events(tmp_path / "j.db", "sync.auth_failed")) == 1
    assert len(sync_events(tmp_path / "j.db", "sync.auth_restored")) == 1


# ---- refusals and dead letters ---------------------------------------------------


def test_rejected_items_become_dead_letters_and_a_corrected_requeue_is_delivered(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    events = reading_events(20)
    bad = json.loads(json.dumps({**_item(events[0]), "reading_id": "bad-1", "value": -5}))

    async def body(journal: Journal) -> list[outbox.DeadLetter]:
        await journal.submit_many(events)
        item = NewItem(METER_READINGS, "bad-1", json.dumps(bad))
        await journal.write(lambda c: outbox.enqueue(c, [item], NOW))
        await drain(journal, receiver.base_url)
        letters = await journal.query(outbox.dead_letters)
        fixed = json.dumps({**bad, "value": 5})
        await journal.write(lambda c: outbox.requeue(c, letters[0].id, fixed, "sup", NOW))
        await drain(journal, receiver.base_url)
        return letters

    letters = with_journal(tmp_path / "j.db", body)
    assert [(d.item_id, d.error) for d in letters] == [("bad-1", letters[0].error)]
    assert "value" in letters[0].error
    stored = {r["reading_id"]: r for r in receiver.readings(SITE)}
    assert stored["bad-1"]["value"] == 5
    assert len(stored) == 21
    [event] = sync_events(tmp_path / "j.db", "sync.dead_letter")
    assert event["items"][0]["id"] == "bad-1"


def _item(event: Event) -> dict[str, Any]:
    from gateway.sync.feeder import reading_items

    return json.loads(next(reading_items(event.device or "", event.payload)).body)


def test_a_request_central_refuses_is_split_until_the_bad_item_is_alone(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    """An item over central's 1 MiB limit gets 413 for its whole batch: the
    sender halves the batch until that item is alone, dead-letters it, and
    delivers the rest."""
    events = reading_events(40)
    huge = {**_item(events[0]), "reading_id": "huge", "flags": ["x" * (1024 * 1024)]}

    async def body(journal: Journal) -> list[outbox.DeadLetter]:
        await journal.submit_many(events[:20])
        item = NewItem(METER_READINGS, "huge", json.dumps(huge))
        await journal.write(lambda c: outbox.enqueue(c, [item], NOW))
        await journal.submit_many(events[20:])
        await drain(journal, receiver.base_url)
        return await journal.query(outbox.dead_letters)

    letters = with_journal(tmp_path / "j.db", body)
    assert [d.item_id for d in letters] == ["huge"]
    assert "413" in letters[0].error
    assert_each_stored_once(receiver, events)


# ---- priorities, incidents, pulls -------------------------------------------------


def test_an_incident_overtakes_a_week_of_readings(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    events = reading_events(12_000)
    receiver.set_faults(delay_s=0.05)
    fire = {
        "incident_id": "inc-fire-1",
        "revision": 1,
        "type": "fire_alarm",
        "priority": "P1",
        "title": "B3 火警",
        "location": "B3 1F",
        "state": "open",
        "opened_at": "2026-11-23T08:00:00+08:00",
        "respond_by": "2026-11-23T08:10:00+08:00",
        "updated_at": "2026-11-23T08:00:00+08:00",
        "handler": None,
        "supervisor": None,
        "timeline": [{"at": "2026-11-23T08:00:00+08:00", "what": "raised", "by": "gateway"}],
    }
    stored_before_fire: list[int] = []

    async def body(journal: Journal) -> None:
        await journal.submit_many(events)

        async def fire_breaks_out(sender: SyncSender) -> None:
            await wait_for(lambda: _delivered_some(receiver), 10)
            stored_before_fire.append(receiver.stats()["readings"]["stored"])
            await journal.write(lambda c: outbox.enqueue(c, [incident_item(fire)], NOW))
            sender.wake()

        await drain(journal, receiver.base_url, settings=FAST, during=fire_breaks_out)

    with_journal(tmp_path / "j.db", body)
    [incident] = receiver.incidents(SITE)
    conn = sqlite3.connect(receiver.db_path)
    try:
        [(before_incident,)] = conn.execute(
            "SELECT count(*) FROM readings WHERE received_at < ?",
            (incident["first_received_at"],),
        ).fetchall()
    finally:
        conn.close()
    # Once queued, the incident waited at most for the batches already on the wire
    # (two in flight, one being read) — not for the 10,000-odd readings behind them.
    assert before_incident - stored_before_fire[0] <= 3 * 1000
    assert before_incident < 12_000 - 5000
    assert incident["ticket_no"].startswith("T-")
    conn = sqlite3.connect(tmp_path / "j.db")
    assert conn.execute("SELECT ticket_no FROM central_tickets").fetchall() == [
        (incident["ticket_no"],)
    ]
    conn.close()


def test_pulls_store_ticket_updates_and_outage_notices_with_their_cursors(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    fire = {
        "incident_id": "inc-9",
        "revision": 1,
        "type": "elevator_entrapment",
        "priority": "P1",
        "title": "电梯困人",
        "location": "B2 lift 1",
        "state": "open",
        "opened_at": "2026-11-23T08:00:00+08:00",
        "respond_by": "2026-11-23T08:10:00+08:00",
        "updated_at": "2026-11-23T08:00:00+08:00",
        "handler": None,
        "supervisor": None,
        "timeline": [],
    }
    db = tmp_path / "j.db"

    async def body(journal: Journal) -> tuple[int, int, int]:
        await journal.write(lambda c: outbox.enqueue(c, [incident_item(fire)], NOW))
        await drain(journal, receiver.base_url)
        receiver.add_ticket_update(incident_id="inc-9", state="assigned", note="工程师 张三")
        receiver.add_ticket_update(incident_id="inc-9", state="resolved", note="已解困")
        receiver.add_outage_notice(
            utility="water",
            scope=["b3", "b4"],
            starts_at="2026-11-24T09:00:00+08:00",
            ends_at="2026-11-24T13:00:00+08:00",
            reason="main repair",
        )
        http = HttpTransport(receiver.base_url, SITE, TOKEN)
        try:
            pulls = CentralPulls(journal, http, Clock(), 60)
            first = await pulls.pull("ticket-updates")
            notices = await pulls.pull("outage-notices")
            again = await pulls.pull("ticket-updates")
        finally:
            await http.close()
        return first, notices, again

    assert with_journal(db, body) == (2, 1, 0)
    conn = sqlite3.connect(db)
    try:
        [(ticket_no, state, note)] = conn.execute(
            "SELECT ticket_no, state, note FROM central_tickets"
        ).fetchall()
        assert ticket_no.startswith("T-") and (state, note) == ("resolved", "已解困")
        [(scope, ends_at)] = conn.execute("SELECT scope, ends_at FROM outage_notices").fetchall()
        assert json.loads(scope) == ["b3", "b4"]
        assert ends_at == "2026-11-24T05:00:00.000+00:00"
        cursors = dict(conn.execute("SELECT name, value FROM sync_cursors").fetchall())
        assert cursors["ticket-updates"] and cursors["outage-notices"]
    finally:
        conn.close()
    assert len(sync_events(db, "central.ticket_update")) == 2
    assert len(sync_events(db, "central.outage_notice")) == 1


def test_incident_revisions_reach_central_latest_wins(
    tmp_path: Path, receiver: CentralReceiver
) -> None:
    base = {
        "incident_id": "inc-2",
        "type": "power_outage",
        "priority": "P1",
        "title": "B3 停电",
        "location": "B3",
        "opened_at": "2026-11-23T08:00:00+08:00",
        "respond_by": "2026-11-23T08:10:00+08:00",
        "updated_at": "2026-11-23T08:00:00+08:00",
        "handler": "guard-07",
        "supervisor": None,
        "timeline": [],
    }

    async def body(journal: Journal) -> None:
        for revision, state in ((1, "open"), (2, "acknowledged")):
            item = incident_item({**base, "revision": revision, "state": state})
            await journal.write(lambda c, i=item: outbox.enqueue(c, [i], NOW))
        await drain(journal, receiver.base_url)
        # an older revision queued late is answered stale and leaves the outbox
        old = incident_item({**base, "revision": 1, "state": "open"})
        await journal.write(lambda c: outbox.enqueue(c, [old], NOW))
        sender = await drain(journal, receiver.base_url)
        assert sender.stats[INCIDENTS].answered["stale"] == 1

    with_journal(tmp_path / "j.db", body)
    [incident] = receiver.incidents(SITE)
    assert (incident["revision"], incident["state"]) == (2, "acknowledged")
