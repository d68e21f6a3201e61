"""Patrol wands in their serial cradle: a simulated wand on a real pty, a real
journal file. Download, guard attribution, de-duplication, clock, clear-after-commit,
corrupt records, noise, an empty cradle and a journal that cannot commit."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.adapters.serial.wand import (
    BadRecord,
    CradleLine,
    WandPoller,
    WandReader,
    WandRecord,
    WandSide,
    build_events,
    checksum,
    decode_line,
    parse_record,
    read_record,
)
from gateway.clock import Clock
from gateway.config import load_site_config
from gateway.health import DeviceState
from gateway.journal.store import Journal
from gateway.sim.wand import SimWand
from tests.harness.journal import with_journal
from tests.harness.site import write_site

ZONE = ZoneInfo("Asia/Shanghai")
WAND = "W1"
CARD_G01 = "0F00AA0001"
CARD_G02 = "0F00AA0002"
GUARDS = {CARD_G01: "G01", CARD_G02: "G02"}
CHIPS = ["0F004EBEFC", "0F004EBEFD", "0F004EBEFE"]


@pytest.fixture
def sim() -> Iterator[SimWand]:
    with SimWand(zone=ZONE) as wand:
        yield wand


def reader_for(sim: SimWand, journal: Journal, *, timeout_s: float = 0.3) -> WandReader:
    return WandReader(
        WAND, CradleLine(sim.port, 9600, timeout_s=timeout_s), journal, Clock(), ZONE, GUARDS
    )


def run(
    path: Path, sim: SimWand, body: Callable[[Journal, WandReader], Awaitable[Any]], **kw: Any
) -> Any:
    async def main(journal: Journal) -> Any:
        reader = reader_for(sim, journal, **kw)
        try:
            return await body(journal, reader)
        finally:
            await asyncio.to_thread(reader.close)

    return with_journal(path, main)


async def events(journal: Journal, kind: str | None = None) -> list[dict[str, Any]]:
    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT id, kind, device, device_time, received_at, payload FROM events ORDER BY seq"
        ).fetchall()
        return [{**dict(row), "payload": json.loads(row["payload"])} for row in rows]

    rows = await journal.query(read)
    return [r for r in rows if kind is None or r["kind"] == kind]


def local_now() -> datetime:
    return datetime.now(ZONE).replace(tzinfo=None)


def load_round(sim: SimWand, start: datetime, card: str = CARD_G01) -> list[str]:
    """A personnel point, then the three checkpoints a minute apart (wand time)."""
    lines = [sim.add_scan(card, start)]
    lines += [sim.add_scan(chip, start + timedelta(minutes=i + 1)) for i, chip in enumerate(CHIPS)]
    return lines


# ---- records, pure ------------------------------------------------------------------


def test_parse_record_reads_the_public_format_and_says_why_not() -> None:
    record = parse_record("0001261123013000 0f004ebefc")
    assert record == WandRecord(1, "261123013000", datetime(2026, 11, 23, 1, 30), "0F004EBEFC")
    assert parse_record("0001261123013000" + "0F004EBEFC") == record
    assert parse_record("000A261123013000 0F004EBEFC").number == 10  # type: ignore[union-attr]
    bad = {
        "": "empty",
        "0001261123013000 0F004E": "characters",
        "0001261399013000 0F004EBEFC": "not a date",
        "00012611230130X0 0F004EBEFC": "hex digits",
        "0001261123013000 FFFFFFFFFF": "blank chip",
        "0000261123013000 0F004EBEFC": "record number 0",
    }
    for line, reason in bad.items():
        assert parse_record(line) is None
        result = read_record(line)
        assert isinstance(result, BadRecord) and reason in result.reason, (line, result)


def test_checksummed_lines_and_noise() -> None:
    body = "N=0005"
    assert decode_line(f"{body}*{checksum(body)}\r".encode()) == (body, True)
    assert decode_line(b"\x00\xffN=0005") == ("N=0005", False)
    assert decode_line(b"N=0005*00") is None  # wrong checksum: noise
    assert decode_line(b"\x00\xff\xfe") is None


def test_a_personnel_point_attributes_the_scans_that_follow_it() -> None:
    t = datetime(2026, 11, 23, 1, 30)
    recs = [
        parse_record(f"0001{t:%y%m%d%H%M%S}{CHIPS[0]}"),  # before any personnel point
        parse_record(f"0002{t + timedelta(minutes=1):%y%m%d%H%M%S}{CARD_G01}"),
        parse_record(f"0003{t + timedelta(minutes=2):%y%m%d%H%M%S}{CHIPS[1]}"),
        parse_record(f"0004{t + timedelta(minutes=3):%y%m%d%H%M%S}{CARD_G02}"),
        parse_record(f"0005{t + timedelta(minutes=4):%y%m%d%H%M%S}{CHIPS[2]}"),
    ]
    records = [(i, r) for i, r in enumerate(recs, start=1) if r is not None]
    now = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    out = build_events(WAND, records, guards=GUARDS, zone=ZONE, received_at=now, skew_s=3)
    assert [(e.kind, e.payload["guard"]) for e in out] == [
        ("patrol.scan", None),
        ("patrol.guard_login", "G01"),
        ("patrol.scan", "G01"),
        ("patrol.guard_login", "G02"),
        ("patrol.scan", "G02"),
    ]
    first = out[0]
    assert first.id == f"patrol-scan:{WAND}:261123013000:{CHIPS[0]}"
    assert first.device_time == datetime(2026, 11, 22, 17, 30, tzinfo=UTC)
    assert first.payload["scanned_at"] == "2026-11-23T01:30:00.000+08:00"
    assert first.received_at == now


# ---- downloads over a pty -----------------------------------------------------------


def test_a_download_imports_attributes_sets_the_clock_and_clears_after_commit(
    tmp_path: Path, sim: SimWand
) -> None:
    sim.clock_offset = timedelta(minutes=-3)
    lines = load_round(sim, sim.clock - timedelta(hours=1))
    commands_at_commit: list[list[str]] = []

    async def body(journal: Journal, reader: WandReader) -> None:
        real_write = journal.write

        async def spy(fn: Any) -> Any:
            result = await real_write(fn)
            commands_at_commit.append(list(sim.commands))
            return result

        journal.write = spy  # type: ignore[method-assign]
        count = await reader.count()
        result = await reader.download(count)
        assert result.complete and result.committed and result.clock_set and result.cleared
        assert (result.read, result.scans, result.logins, result.errors) == (4, 3, 1, 0)
        assert result.stored == 4
        assert result.skew_s is not None and abs(result.skew_s + 180) <= 2

        scans = await events(journal, "patrol.scan")
        assert [s["payload"]["tag"] for s in scans] == CHIPS
        assert {s["payload"]["guard"] for s in scans} == {"G01"}
        first = scans[0]
        stamp = lines[1][4:16]
        assert first["id"] == f"patrol-scan:{WAND}:{stamp}:{CHIPS[0]}"
        assert first["device"] == WAND
        assert first["payload"]["method"] == "wand"
        assert first["payload"]["record"] == 2
        assert abs(first["payload"]["clock_skew_s"] + 180) <= 2
        wand_time = datetime.strptime(stamp, "%y%m%d%H%M%S").replace(tzinfo=ZONE)
        assert datetime.fromisoformat(first["device_time"]) == wand_time
        assert datetime.fromisoformat(first["payload"]["scanned_at"]) == wand_time
        received = datetime.fromisoformat(first["received_at"])
        assert abs((received - datetime.now(UTC)).total_seconds()) < 10
        [login] = await events(journal, "patrol.guard_login")
        assert login["payload"]["guard"] == "G01" and login["payload"]["tag"] == CARD_G01
        assert login["payload"]["scan_id"] == f"{WAND}:{lines[0][4:16]}:{CARD_G01}"
        [clock_event] = await events(journal, "patrol.wand_clock")
        assert abs(clock_event["payload"]["clock_skew_s"] + 180) <= 2

    run(tmp_path / "journal.db", sim, body)
    # one commit, and the wand heard neither the clock nor the clear before it
    [before_commit] = commands_at_commit
    assert before_commit == ["N?", "T?", "R0001", "R0002", "R0003", "R0004"]
    assert sim.commands[: len(before_commit)] == before_commit
    after = sim.commands[len(before_commit) :]
    assert after[0].startswith("T") and after[0] != "T?"
    assert after[1:] == ["N?", "C"]
    assert sim.records == []
    assert abs((sim.clock - local_now()).total_seconds()) < 2  # the gateway's time now


def test_a_wand_that_was_not_cleared_is_downloaded_again_and_adds_nothing(
    tmp_path: Path, sim: SimWand
) -> None:
    load_round(sim, sim.clock - timedelta(hours=1))
    sim.refuse_clear = 1

    async def body(journal: Journal, reader: WandReader) -> None:
        poller = WandPoller(reader, retry_s=0)
        first = await poller.poll_once()
        assert first is not None and first.committed and first.stored == 4
        assert not first.cleared and first.problem is not None
        assert len(sim.records) == 4
        second = await poller.poll_once()
        assert second is not None and second.read == 4 and second.stored == 0
        assert second.cleared and sim.records == []
        assert await poller.poll_once() is None  # docked, empty: nothing to do
        assert len(await events(journal, "patrol.scan")) == 3
        assert len(await events(journal, "patrol.guard_login")) == 1
        assert poller.health.state is DeviceState.ONLINE

    run(tmp_path / "journal.db", sim, body)
    assert sim.commands.count("C") == 2


@pytest.mark.parametrize("with_checksum", [True, False])
def test_a_corrupt_record_is_journalled_and_the_rest_imported(
    tmp_path: Path, with_checksum: bool
) -> None:
    with SimWand(zone=ZONE, checksum=with_checksum) as sim:
        start = sim.clock - timedelta(hours=1)
        sim.add_scan(CARD_G01, start)
        sim.add_scan(CHIPS[0], start + timedelta(minutes=1))
        garbled = sim.inject_corrupt()
        sim.add_scan(CHIPS[1], start + timedelta(minutes=3))
        sim.refuse_clear = 1  # and downloaded twice: still one error

        async def body(journal: Journal, reader: WandReader) -> None:
            first = await reader.download(await reader.count())
            assert first.errors == 1 and first.scans == 2 and first.complete
            second = await reader.download(await reader.count())
            assert second.stored == 0 and second.cleared
            [error] = await events(journal, "patrol.wand_error")
            assert error["device"] == WAND
            assert error["payload"]["wand"] == WAND
            assert error["payload"]["record"] == 3
            assert error["payload"]["line"] == repr(garbled)
            assert "characters" in error["payload"]["reason"]
            scans = await events(journal, "patrol.scan")
            assert [s["payload"]["tag"] for s in scans] == CHIPS[:2]
            assert {s["payload"]["guard"] for s in scans} == {"G01"}

        run(tmp_path / "journal.db", sim, body)
        assert sim.records == []


def test_a_wand_clock_14_hours_off_keeps_its_time_and_reports_the_skew(
    tmp_path: Path,
) -> None:
    with SimWand(zone=ZONE, clock_offset=timedelta(hours=14)) as sim:
        wand_start = sim.clock - timedelta(minutes=30)
        load_round(sim, wand_start)

        async def body(journal: Journal, reader: WandReader) -> None:
            result = await reader.download(await reader.count())
            assert result.cleared and result.skew_s is not None
            assert abs(result.skew_s - 50400) <= 2
            scans = await events(journal, "patrol.scan")
            for i, scan in enumerate(scans):
                wand_time = (wand_start + timedelta(minutes=i + 1)).replace(
                    microsecond=0, tzinfo=ZONE
                )
                assert datetime.fromisoformat(scan["device_time"]) == wand_time
                assert abs(scan["payload"]["clock_skew_s"] - 50400) <= 2
                received = datetime.fromisoformat(scan["received_at"])
                assert abs((received - datetime.now(UTC)).total_seconds()) < 10
            [clock_event] = await events(journal, "patrol.wand_clock")
            assert abs(clock_event["payload"]["clock_skew_s"] - 50400) <= 2

        run(tmp_path / "journal.db", sim, body)
        assert abs((sim.clock - local_now()).total_seconds()) < 2


def test_noise_on_the_line_is_ignored_and_counted(tmp_path: Path, sim: SimWand) -> None:
    load_round(sim, sim.clock - timedelta(hours=1))
    late = "0009261123013000 0F004EBEFC"  # a well-formed answer to another request
    sim.noise_before_reply = (
        b"\x00\xff#@!\r\n~~N=ZZ\r\nN=0009*00\r\n" + f"{late}*{checksum(late)}\r\n".encode()
    )

    async def body(journal: Journal, reader: WandReader) -> None:
        poller = WandPoller(reader)
        sim.send_noise()
        result = await poller.poll_once()
        assert result is not None and result.cleared
        assert (result.scans, result.logins, result.errors) == (3, 1, 0)
        assert [s["payload"]["tag"] for s in await events(journal, "patrol.scan")] == CHIPS
        assert poller.health.state is DeviceState.ONLINE
        assert poller.health.counters["frame_error"] >= 3 * len(sim.commands)

    run(tmp_path / "journal.db", sim, body)


def test_an_empty_cradle_is_normal_and_a_missing_port_goes_offline(
    tmp_path: Path, sim: SimWand, caplog: pytest.LogCaptureFixture
) -> None:
    sim.docked = False

    async def body(journal: Journal, reader: WandReader) -> None:
        poller = WandPoller(reader)
        for _ in range(3):
            assert await poller.poll_once() is None
        assert poller.health.state is DeviceState.UNKNOWN and not poller.docked
        assert poller.health.counters["no_wand"] == 3
        sim.docked = True
        load_round(sim, sim.clock - timedelta(hours=1))
        result = await poller.poll_once()
        assert result is not None and result.cleared and poller.docked
        assert poller.health.state is DeviceState.ONLINE
        sim.docked = False  # the guard takes the wand on his round
        for _ in range(3):
            assert await poller.poll_once() is None
        assert poller.health.state is DeviceState.ONLINE and not poller.docked
        assert poller.health.counters["no_wand"] == 6
        health = [e["payload"]["state"] for e in await events(journal, "device.health")]
        assert health == ["online"]  # no device-offline alarm for every round

        strict = WandPoller(
            reader_for(sim, journal), silence_is_failure=True
        )  # when a silent cradle must be a fault
        try:
            for _ in range(3):
                assert await strict.poll_once() is None
        finally:
            await asyncio.to_thread(strict.reader.close)
        assert strict.health.state is DeviceState.OFFLINE
        assert strict.health.counters["timeout"] == 3

        missing = WandReader(
            "W2",
            CradleLine(str(tmp_path / "no-such-tty"), timeout_s=0.2),
            journal,
            Clock(),
            ZONE,
            {},
        )
        lost = WandPoller(missing)
        for _ in range(3):
            assert await lost.poll_once() is None
        assert lost.health.state is DeviceState.OFFLINE
        assert lost.health.counters["link_down"] == 3
        states = [
            (e["device"], e["payload"]["state"]) for e in await events(journal, "device.health")
        ]
        assert states == [
            (WAND, "online"),
            (WAND, "degraded"),
            (WAND, "offline"),
            ("W2", "degraded"),
            ("W2", "offline"),
        ]

    with caplog.at_level("DEBUG", logger="gateway.adapters.serial.wand"):
        run(tmp_path / "journal.db", sim, body)
    mine = [r for r in caplog.records if r.name == "gateway.adapters.serial.wand"]
    w1 = [r.getMessage() for r in mine if "wand=W1" in r.getMessage() and r.levelname != "DEBUG"]
    assert len([m for m in w1 if "left the cradle" in m]) == 1  # not one per poll
    warnings = [r.getMessage() for r in mine if r.levelname == "WARNING"]
    assert warnings and all("W2" in m for m in warnings)  # only the broken port warns


def test_the_wand_is_not_cleared_when_the_journal_refuses_the_download(
    tmp_path: Path, sim: SimWand
) -> None:
    sim.clock_offset = timedelta(hours=14)
    load_round(sim, sim.clock - timedelta(hours=1))

    async def body(journal: Journal, reader: WandReader) -> None:
        count = await reader.count()
        journal.stop_intake()
        result = await reader.download(count)
        assert not result.committed and not result.cleared and not result.clock_set
        assert result.problem is not None and "intake stopped" in result.problem

    run(tmp_path / "journal.db", sim, body)
    assert len(sim.records) == 4
    assert "C" not in sim.commands
    assert not any(c.startswith("T") and c != "T?" for c in sim.commands)
    assert abs((sim.clock - local_now()).total_seconds() - 50400) < 2  # clock left alone


def test_a_failed_commit_leaves_the_wand_full_and_a_later_download_recovers(
    tmp_path: Path, sim: SimWand
) -> None:
    path = tmp_path / "journal.db"
    load_round(sim, sim.clock - timedelta(hours=1))

    async def noop(journal: Journal) -> None:
        return None

    with_journal(path, noop)  # create and migrate
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END"
        )

    async def body(journal: Journal, reader: WandReader) -> None:
        failed = await reader.download(await reader.count())
        assert not failed.committed and not failed.cleared
        assert "simulated write failure" in (failed.problem or "")
        assert len(sim.records) == 4 and "C" not in sim.commands
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER full_disk")
        again = await reader.download(await reader.count())
        assert again.committed and again.stored == 4 and again.cleared
        assert len(await events(journal, "patrol.scan")) == 3

    run(path, sim, body)
    assert sim.records == []


def test_an_unanswered_record_stops_the_download_until_it_is_given_up(
    tmp_path: Path, sim: SimWand
) -> None:
    sim.clock_offset = timedelta(hours=2)
    load_round(sim, sim.clock - timedelta(hours=1))
    sim.mute_records = {3}

    async def body(journal: Journal, reader: WandReader) -> None:
        first = await reader.download(await reader.count())
        assert not first.complete and first.committed and first.read == 2
        assert not first.clock_set and not first.cleared
        assert len(await events(journal, "patrol.scan")) == 1  # the records before it
        second = await reader.download(await reader.count())
        assert second.complete and second.cleared and second.errors == 1
        assert abs((second.skew_s or 0) - 7200) <= 2  # the clock was not set in between
        [error] = await events(journal, "patrol.wand_error")
        assert error["payload"]["record"] == 3 and "no answer" in error["payload"]["reason"]
        scans = await events(journal, "patrol.scan")
        assert [s["payload"]["tag"] for s in scans] == [CHIPS[0], CHIPS[2]]
        assert {s["payload"]["guard"] for s in scans} == {"G01"}

    run(tmp_path / "journal.db", sim, body)
    assert sim.records == []


def test_the_wand_side_part_runs_from_the_site_file(tmp_path: Path, sim: SimWand) -> None:
    site = write_site(
        tmp_path,
        extra=(
            f'\n[[devices.patrol_wands]]\nid = "{WAND}"\ndevice = "{sim.port}"\n'
            f'\n[[patrol.guards]]\nid = "G01"\nname = "张三"\ncards = ["{CARD_G01}"]\n'
        ),
    )
    config = load_site_config(site.path)
    load_round(sim, sim.clock - timedelta(hours=1))

    async def body(journal: Journal) -> None:
        side = WandSide.build(config, journal, Clock(), poll_s=0.05, timeout_s=0.2)
        [(name, factory)] = side.parts()
        [health] = side.devices()
        assert name == f"wand:{WAND}" and health.device == WAND
        task = asyncio.create_task(factory())
        try:
            for _ in range(100):
                if sim.records == [] and health.state is DeviceState.ONLINE:
                    break
                await asyncio.sleep(0.05)
            assert sim.records == []
            scans = await events(journal, "patrol.scan")
            assert {s["payload"]["guard"] for s in scans} == {"G01"}
            sim.docked = False
            [poller] = side.pollers
            for _ in range(100):
                if not poller.docked:
                    break
                await asyncio.sleep(0.05)
            assert not poller.docked and health.counters["no_wand"] >= 1
            assert health.state is DeviceState.ONLINE
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    with_journal(site.journal, body)
