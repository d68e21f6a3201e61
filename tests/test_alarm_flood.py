"""The alarm service on a real journal: a flood of 500 alarms with a P1 in the
middle (first and immediate), KPIs per shift, a supervisor's planned outage
and its overrun, an engine fault that must not stop the alarms."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.alarms.kpis import shift_kpis, shift_window
from gateway.alarms.plan import load_plan
from gateway.alarms.rules import Device, Directory
from gateway.alarms.service import AlarmService
from gateway.auth import Principal
from gateway.clock import ShiftedClock
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.web.alarms import board
from tests.harness.journal import with_journal

PLAN = load_plan()
SUPERVISOR = Principal("sup-02", "supervisor")


def service(journal: Journal, clock: ShiftedClock | None = None) -> AlarmService:
    devices = [Device(f"B07-{n:02d}", "meter", None, "electricity", "B07") for n in range(6)]
    return AlarmService(
        PLAN,
        Directory(devices),
        journal,
        clock or ShiftedClock(datetime.now(UTC)),
        site_name="测试小区",
        tick_s=0.05,
    )


async def run_until(svc: AlarmService, done: Any, timeout: float = 10.0) -> None:
    task = asyncio.create_task(svc.run())
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, (
                f"condition not reached: {sorted(svc.engine.alarms) if svc.engine else None}"
            )
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_flood_of_500_alarms_keeps_p1_first_and_immediate(tmp_path: Path) -> None:
    async def body(journal: Journal) -> None:
        svc = service(journal)
        sub = svc.stream.subscribe()
        task = asyncio.create_task(svc.run())
        await journal.submit_many(
            [Event("door.forced", f"door-{n:03d}", {"door": 1}) for n in range(500)]
        )
        while len(svc.views()) < 500:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        fire = Event(
            "io.input",
            "io-1",
            {"input": 1, "meaning": "elevator_alarm", "where": "B07-L1", "abnormal": True},
        )
        await journal.submit(fire)
        committed = time.monotonic()
        while True:
            message = await asyncio.wait_for(sub.queue.get(), 5)
            if message.get("type") == "alarm" and message["alarm"]["priority"] == "P1":
                break
        published = time.monotonic() - committed
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert published < 0.5, f"P1 on the stream {published:.3f} s after its event"
        assert svc.engine is not None and svc.engine.flood
        shown = board(svc.views(), flood=True)
        assert [a["priority"] for a in shown["alarms"]] == ["P1"]
        assert shown["alarms"][0]["alarm_id"] == "elevator-alarm-relay:io-1/1"
        [group] = shown["groups"]
        assert group["count"] == 500 and group["priority"] == "P3"
        assert group["first_out"]["alarm_id"] == "door-forced:door-000"

    with_journal(tmp_path / "journal.db", body)


def test_kpis_count_a_shift_rate_flood_time_top10_and_chattering(tmp_path: Path) -> None:
    zone = PLAN.plan.shifts
    start = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai: a shift start

    async def body(journal: Journal) -> dict[str, Any]:
        clock = ShiftedClock(start + timedelta(minutes=1), speed=60)  # a minute a second
        svc = service(journal, clock)
        for n in range(12):
            await journal.submit(Event("door.forced", f"door-{n:02d}", {"door": 1}))
        for _ in range(3):
            beam = {"input": 2, "meaning": "perimeter_beam", "where": "北墙", "abnormal": True}
            await journal.submit(Event("io.input", "io-2", beam))
            await journal.submit(Event("io.input", "io-2", {**beam, "abnormal": False}))
        await run_until(svc, lambda: len(svc.views()) == 13)
        await asyncio.sleep(0.1)  # six shifted seconds of flood, whatever the machine's speed
        now = clock.now()
        window = shift_window(now, zone, ZoneInfo("Asia/Shanghai"))
        assert window == (start, start + timedelta(hours=12))
        return await journal.query(lambda conn: shift_kpis(conn, *window, now))

    figures = with_journal(tmp_path / "journal.db", body)
    assert figures["alarms"] == 15
    assert figures["by_priority"] == {"P3": 12, "P2": 3}
    assert figures["max_per_10_min"] == 15
    assert figures["time_in_flood_s"] >= 1
    assert figures["top10"][0] == {"alarm_id": "perimeter-beam-relay:io-2/2", "count": 3}
    assert figures["top10_share_pct"] == round(100 * 12 / 15, 1)
    assert figures["chattering"] == 1


def test_a_supervisors_planned_outage_suppresses_then_overruns(tmp_path: Path) -> None:
    clock = ShiftedClock(datetime.now(UTC))

    async def body(journal: Journal) -> None:
        svc = service(journal, clock)
        now = clock.now()
        await svc.plan_outage(
            {
                "notice_id": "local-1",
                "utility": "electricity",
                "scope": ["B07"],
                "starts_at": (now - timedelta(minutes=1)).isoformat(),
                "ends_at": (now + timedelta(seconds=2)).isoformat(),
                "reason": "变压器检修",
            },
            SUPERVISOR,
        )
        for n in range(6):
            await journal.submit(
                Event("device.health", f"B07-{n:02d}", {"state": "offline", "previous": "online"})
            )

        def state() -> str | None:
            engine = svc.engine
            alarm = engine.alarms.get("building-power:B07") if engine else None
            return alarm.state.value if alarm else None

        await run_until(svc, lambda: state() == "suppressed")
        await run_until(svc, lambda: state() == "unacknowledged", timeout=10)
        assert svc.engine is not None
        whats = [e.what for e in svc.engine.alarms["building-power:B07"].timeline]
        assert whats == ["raised", "unsuppressed"]
        audit = await journal.query(lambda c: c.execute("SELECT who, action FROM audit").fetchall())
        assert [tuple(r) for r in audit] == [("sup-02", "outage.plan")]

    with_journal(tmp_path / "journal.db", body)


def test_an_event_the_engine_cannot_digest_is_skipped_not_fatal(tmp_path: Path) -> None:
    async def body(journal: Journal) -> None:
        svc = service(journal)
        # a payload that is a list, and a health event for a group member with junk in it
        await journal.submit(Event("device.health", "B07-00", ["not", "a", "table"]))  # type: ignore[arg-type]
        await journal.submit(Event("door.forced", "door-1", {"door": 1}))
        await run_until(
            svc, lambda: "door-forced:door-1" in (svc.engine.alarms if svc.engine else {})
        )

    with_journal(tmp_path / "journal.db", body)
