"""The wall clock set back or forward under a running gateway (NTP correcting a box
that booted with a wrong time, a reset RTC): the step is noticed and alarmed, and
no meter reading is lost to an id an earlier reading already had."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from gateway.alarms.engine import AlarmEngine
from gateway.alarms.plan import load_plan
from gateway.alarms.rules import Directory
from gateway.clock import StepWatch
from gateway.meters.book import MeterBook
from tests.test_meter_book import HOME, local, readings, run


class FakeTime:
    """A wall clock and a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1_000.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_a_step_is_told_apart_from_running_and_from_drift() -> None:
    t = FakeTime()
    watch = StepWatch(2.0, wall=lambda: t.wall, monotonic=lambda: t.mono)
    t.run(60)
    assert watch.step() is None, "a running clock is not a step"
    t.wall += 0.5  # NTP slewing
    assert watch.step() is None
    t.run(10)
    t.wall -= 3600
    assert watch.step() == -3600
    t.run(10)
    assert watch.step() is None, "told once"
    t.wall += 90
    assert watch.step() == 90


def test_a_step_raises_the_plans_clock_alarm() -> None:
    at = local(2026, 11, 23, 8, 0)
    engine = AlarmEngine(load_plan(), Directory([]), site_name="测试小区", started=at)
    engine.on_event("gateway.clock_step", None, {"step_s": -3600.0}, at)
    alarm = engine.alarms["clock-step:site"]
    assert alarm.priority == "P3" and alarm.state == "rtn_unacknowledged"


def test_readings_after_the_clock_went_back_are_kept_flagged_and_never_collide(
    tmp_path: Path,
) -> None:
    t0 = local(2026, 11, 23, 8, 0)

    async def body(book: MeterBook) -> None:
        await book.record_poll(HOME.id, t0, {"import_kwh": 100.0})
        await book.record_poll(HOME.id, t0 + timedelta(minutes=15), {"import_kwh": 100.4})
        # the clock is set back an hour: the next polls would reuse earlier times (and ids)
        back = await book.record_poll(HOME.id, t0 + timedelta(minutes=15), {"import_kwh": 100.8})
        again = await book.record_poll(HOME.id, t0 - timedelta(minutes=30), {"import_kwh": 101.2})
        assert back.id != again.id
        # once real time passes the last reading again, readings are normal
        await book.record_poll(HOME.id, t0 + timedelta(minutes=30), {"import_kwh": 101.6})

    run(tmp_path / "j.db", body)
    payloads = readings(tmp_path / "j.db")
    assert [p["readings"][0]["value"] for p in payloads] == [100.0, 100.4, 100.8, 101.2, 101.6]
    ids = [p["readings"][0]["reading_id"] for p in payloads]
    assert len(set(ids)) == 5, "no reading takes an earlier one's id"
    stepped = [p["readings"][0] for p in payloads[2:4]]
    assert all(r["quality"] == "suspect" and "clock_went_back" in r["flags"] for r in stepped)
    assert [p["read_at"] for p in payloads[2:4]] == [
        "2026-11-23T08:15:01+08:00",
        "2026-11-23T08:15:02+08:00",
    ]
    assert payloads[4]["readings"][0]["quality"] == "good"
