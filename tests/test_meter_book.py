"""The meter book against a real journal: VEE, period closes, estimates,
manual readings, replacements, and restart from the journal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.journal.store import Journal
from gateway.meters.book import MeterBook, MeterInfo, UnknownMeter
from gateway.meters.period import interpolate, last_boundary, next_boundary, period_closed_by
from gateway.meters.vee import InvalidReading
from gateway.profiles import load_profile

SHANGHAI = ZoneInfo("Asia/Shanghai")
PROFILES = Path(__file__).parent.parent / "config" / "profiles"
DDSU = load_profile(PROFILES / "chint-ddsu666.toml")
HOME = MeterInfo("B01-0101-E", "electricity", "billed", DDSU, 900)
MAIN = MeterInfo("B01-MAIN-E", "electricity", "main", DDSU, 60)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)  # type: ignore[misc]


def run(path: Path, body: Callable[[MeterBook], Awaitable[None]], **kwargs: float) -> None:
    async def main() -> None:
        journal = await Journal.open(path)
        try:
            book = MeterBook(journal, SHANGHAI, [HOME, MAIN], **kwargs)
            await book.load()
            await body(book)
        finally:
            await journal.close()

    asyncio.run(main())


def readings(path: Path, meter: str = HOME.id) -> list[dict]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT payload FROM events WHERE kind = 'meter.reading' AND device = ? ORDER BY seq",
        (meter,),
    ).fetchall()
    conn.close()
    return [json.loads(row[0]) for row in rows]


def test_boundaries_in_site_time() -> None:
    now = local(2026, 11, 23, 8, 0)
    assert last_boundary(now, SHANGHAI) == local(2026, 11, 1)
    assert next_boundary(now, SHANGHAI) == local(2026, 12, 1)
    assert next_boundary(local(2026, 12, 15), SHANGHAI) == local(2027, 1, 1)
    assert period_closed_by(local(2026, 12, 1), SHANGHAI) == "2026-11"
    assert period_closed_by(local(2027, 1, 1), SHANGHAI) == "2026-12"
    # 16:00 UTC on Nov 30 is already Dec 1 in Shanghai
    assert last_boundary(datetime.fromisoformat("2026-11-30T16:30:00+00:00"), SHANGHAI) == local(
        2026, 12, 1
    )


def test_reading_ids_and_payload(tmp_path: Path) -> None:
    async def body(book: MeterBook) -> None:
        event = await book.record_poll(
            HOME.id, local(2026, 11, 23, 8, 0), {"import_kwh": 1234.5, "voltage": 229.8}
        )
        assert event.id == "B01-0101-E@2026-11-23T08:00:00+08:00"

    run(tmp_path / "j.db", body)
    [payload] = readings(tmp_path / "j.db")
    assert payload["read_at"] == "2026-11-23T08:00:00+08:00"
    assert payload["instant"] == {"voltage": 229.8}
    assert payload["readings"] == [
        {
            "register": "import_kwh",
            "value": 1234.5,
            "unit": "kWh",
            "quality": "good",
            "flags": [],
            "reading_id": "B01-0101-E:import_kwh:2026-11-23T08:00:00+08:00",
        }
    ]


def test_vee_decrease_rate_and_nan(tmp_path: Path) -> None:
    t0 = local(2026, 11, 23, 8, 0)

    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, t0, {"import_kwh": 100.0})
        await book.record_poll(HOME.id, t0 + timedelta(minutes=15), {"import_kwh": 99.0})
        # 15 kWh/h at most: +100 kWh in 15 minutes is implausible
        await book.record_poll(HOME.id, t0 + timedelta(minutes=30), {"import_kwh": 200.0})
        # the baseline stayed at the last good value: this one is fine again
        await book.record_poll(HOME.id, t0 + timedelta(minutes=45), {"import_kwh": 101.0})
        await book.record_poll(
            HOME.id, t0 + timedelta(minutes=60), {"import_kwh": float("nan"), "voltage": 230.0}
        )

    run(tmp_path / "j.db", body)
    got = [(p["readings"], p.get("rejected")) for p in readings(tmp_path / "j.db")]
    assert [(r[0]["quality"], r[0]["flags"]) for r, _ in got[:4]] == [
        ("good", []),
        ("suspect", ["decreased"]),
        ("suspect", ["rate_exceeded"]),
        ("good", []),
    ]
    assert got[4][0] == []
    assert got[4][1] == [
        {"register": "import_kwh", "reason": "import_kwh: nan is not a number a meter can show"}
    ]


def test_rollover_is_good_when_configured(tmp_path: Path) -> None:
    spec = dataclasses.replace(DDSU.value("import_kwh"), rollover_at=99999.9)
    profile = dataclasses.replace(
        DDSU, values=tuple(spec if v.name == "import_kwh" else v for v in DDSU.values)
    )
    meter = MeterInfo("OLD-E", "electricity", "billed", profile, 900)
    t0 = local(2026, 11, 23, 8, 0)

    async def main() -> None:
        journal = await Journal.open(tmp_path / "j.db")
        book = MeterBook(journal, SHANGHAI, [meter])
        await book.record_poll("OLD-E", t0, {"import_kwh": 99999.0})
        event = await book.record_poll("OLD-E", t0 + timedelta(hours=1), {"import_kwh": 2.0})
        assert event.payload["readings"][0]["quality"] == "good"
        assert event.payload["readings"][0]["flags"] == ["rollover"]
        await journal.close()

    asyncio.run(main())


def test_period_close_read_at_the_boundary(tmp_path: Path) -> None:
    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, local(2026, 11, 30, 23, 50), {"import_kwh": 500.0})
        assert await book.open_period(local(2026, 12, 1), only_known_before=False) == 1
        assert book.owed() == {HOME.id: ["2026-11"]}  # the main meter owes nothing
        event = await book.record_poll(HOME.id, local(2026, 12, 1, 0, 0, 4), {"import_kwh": 501.0})
        assert event.payload["billing_period"] == "2026-11"
        assert book.owed() == {}

    run(tmp_path / "j.db", body)
    conn = sqlite3.connect(tmp_path / "j.db")
    assert conn.execute("SELECT meter, period, status FROM period_close").fetchall() == [
        (HOME.id, "2026-11", "read")
    ]
    conn.close()


def test_missed_boundary_is_estimated_by_interpolation(tmp_path: Path) -> None:
    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, local(2026, 11, 30, 22, 0), {"import_kwh": 500.0})
        await book.open_period(local(2026, 12, 1), only_known_before=False)
        # the meter is unreachable until 02:00: too late to count as read at the boundary
        event = await book.record_poll(HOME.id, local(2026, 12, 1, 2, 0), {"import_kwh": 504.0})
        assert event.payload["billing_period"] is None
        assert book.owed() == {}

    run(tmp_path / "j.db", body)
    estimate = next(p for p in readings(tmp_path / "j.db") if p["source"] == "estimate")
    assert estimate["billing_period"] == "2026-11"
    assert estimate["read_at"] == "2026-12-01T00:00:00+08:00"
    [reading] = estimate["readings"]
    assert reading["value"] == 502.0  # halfway in time, halfway in consumption
    assert reading["quality"] == "estimated"
    assert reading["flags"] == ["interpolated"]
    assert reading["reading_id"] == "B01-0101-E:import_kwh:2026-12-01T00:00:00+08:00"


def test_suspect_reading_does_not_close_a_period(tmp_path: Path) -> None:
    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, local(2026, 11, 30, 23, 0), {"import_kwh": 500.0})
        await book.open_period(local(2026, 12, 1), only_known_before=False)
        await book.record_poll(HOME.id, local(2026, 12, 1, 0, 1), {"import_kwh": 10.0})
        assert book.owed() == {HOME.id: ["2026-11"]}

    run(tmp_path / "j.db", body)


def test_catch_up_skips_meters_never_read_before_the_boundary(tmp_path: Path) -> None:
    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, local(2026, 12, 3), {"import_kwh": 500.0})
        assert await book.open_period(local(2026, 12, 1), only_known_before=True) == 0
        assert await book.open_period(local(2027, 1, 1), only_known_before=True) == 1

    run(tmp_path / "j.db", body)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def first(book: MeterBook) -> None:
        await book.record_poll(HOME.id, local(2026, 11, 30, 22, 0), {"import_kwh": 500.0})
        await book.open_period(local(2026, 12, 1), only_known_before=False)

    async def second(book: MeterBook) -> None:
        assert book.owed() == {HOME.id: ["2026-11"]}
        event = await book.record_poll(HOME.id, local(2026, 12, 1, 1), {"import_kwh": 499.0})
        assert event.payload["readings"][0]["flags"] == ["decreased"]  # baseline restored
        await book.record_poll(HOME.id, local(2026, 12, 1, 2), {"import_kwh": 504.0})
        assert book.owed() == {}

    run(path, first)
    run(path, second)


def test_manual_reading_and_replacement(tmp_path: Path) -> None:
    t0 = local(2026, 11, 23, 8, 0)

    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, t0, {"import_kwh": 8000.0})
        manual = await book.enter_manual(
            HOME.id,
            "import_kwh",
            8003.0,
            t0 + timedelta(hours=2),
            entered_by="li.qiang",
            reason="display only, bus fault",
            photo_ref="IMG_0412.jpg",
        )
        assert manual.payload["source"] == "manual"
        assert manual.payload["readings"][0]["flags"] == ["manual"]
        await book.enter_replacement(
            HOME.id,
            "import_kwh",
            8004.5,
            0.0,
            t0 + timedelta(hours=3),
            entered_by="li.qiang",
            reason="meter burnt, replaced",
        )
        new = await book.record_poll(HOME.id, t0 + timedelta(hours=4), {"import_kwh": 0.7})
        assert new.payload["readings"][0]["quality"] == "good"
        assert new.payload["readings"][0]["flags"] == ["meter_replaced"]
        after = await book.record_poll(HOME.id, t0 + timedelta(hours=5), {"import_kwh": 1.2})
        assert after.payload["readings"][0]["flags"] == []
        with pytest.raises(UnknownMeter):
            await book.enter_manual(
                HOME.id, "voltage", 1.0, t0, entered_by="x", reason="yy", photo_ref=None
            )
        with pytest.raises(InvalidReading):
            await book.enter_manual(
                HOME.id, "import_kwh", float("inf"), t0, entered_by="x", reason="yy", photo_ref=None
            )

    run(tmp_path / "j.db", body)


def test_gap_is_recorded(tmp_path: Path) -> None:
    t0 = local(2026, 11, 23, 8, 0)

    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, t0, {"import_kwh": 1.0})
        event = await book.record_poll(HOME.id, t0 + timedelta(hours=3), {"import_kwh": 2.0})
        assert event.payload["gap_before_s"] == 3 * 3600

    run(tmp_path / "j.db", body)


def test_interpolate_across_rollover() -> None:
    spec = dataclasses.replace(DDSU.value("import_kwh"), rollover_at=1000.0)
    t0 = local(2026, 11, 30, 23)
    value = interpolate(spec, (t0, 990.0), (t0 + timedelta(hours=2), 10.0), t0 + timedelta(hours=1))
    assert value == 0.0
