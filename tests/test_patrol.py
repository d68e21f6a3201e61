"""The guard tour's logic: rounds from schedules (across midnight), every
detection rule, per-scan flags, and the tracker on a real journal raising the
plan's patrol alarms through the alarm engine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.alarms.plan import load_plan
from gateway.alarms.rules import Directory
from gateway.alarms.service import AlarmService
from gateway.clock import ShiftedClock
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.patrol.flags import flag_scan
from gateway.patrol.model import PatrolSettings
from gateway.patrol.rounds import Scan, judge, rounds_between
from gateway.patrol.tracker import PatrolTracker, round_report
from tests.harness.journal import with_journal

ZONE = ZoneInfo("Asia/Shanghai")


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=ZONE)


def settings(order: str = "free") -> PatrolSettings:
    return PatrolSettings.model_validate(
        {
            "signing_secret": "s",
            "checkpoints": [
                {"id": "CP-1", "name": "1号楼大堂", "tags": ["0F004EBEFC"]},
                {"id": "CP-2", "name": "地库入口", "tags": ["0F004EBE01"]},
                {"id": "CP-3", "name": "北围墙", "tags": ["0F004EBE02"], "code": "N03"},
            ],
            "routes": [
                {
                    "id": "night",
                    "name": "夜巡",
                    "order": order,
                    "min_gap_s": 60,
                    "stops": [
                        {"checkpoint": "CP-1", "offset_min": 0, "deviation_min": 5},
                        {"checkpoint": "CP-2", "offset_min": 15, "deviation_min": 5},
                        {"checkpoint": "CP-3", "offset_min": 30, "deviation_min": 5},
                    ],
                }
            ],
            "schedules": [
                {
                    "id": "nights",
                    "route": "night",
                    "start": "22:00",
                    "end": "06:00",
                    "every_min": 120,
                }
            ],
            "guards": [{"id": "zhang", "name": "张三", "cards": ["0F00AA0001"]}],
        }
    )


def scan(cp: str | None, at: datetime, guard: str = "zhang", sid: str = "") -> Scan:
    return Scan(sid or f"{cp}@{at.isoformat()}", cp, cp or "FFFF", guard, "qr", at, at, "phone")


def test_night_rounds_cross_midnight() -> None:
    rounds = rounds_between(settings(), ZONE, local(23, 12), local(24, 12))
    starts = [r.start.strftime("%d %H:%M") for r in rounds]
    assert starts == ["23 22:00", "24 00:00", "24 02:00", "24 04:00"]
    assert rounds[1].id == "nights@20261124T0000"
    assert rounds[0].closes == local(23, 22, 35)


def test_a_round_walked_on_time_is_complete() -> None:
    [rnd] = rounds_between(settings(), ZONE, local(23, 21), local(23, 23))
    walked = [scan("CP-1", local(23, 22, 1)), scan("CP-2", local(23, 22, 14)),
              scan("CP-3", local(23, 22, 31))]  # fmt: skip
    [finished] = judge(settings(), rnd, walked)
    assert finished.kind == "patrol.round_finished"
    assert finished.payload["completion_pct"] == 100.0 and not finished.payload["escalate"]


def test_missed_late_early_and_the_escalation_below_70_percent() -> None:
    [rnd] = rounds_between(settings(), ZONE, local(23, 21), local(23, 23))
    walked = [scan("CP-1", local(23, 21, 52)), scan("CP-2", local(23, 22, 27))]
    kinds = {f.kind: f for f in judge(settings(), rnd, walked)}
    assert kinds["patrol.checkpoint_early"].payload["early_min"] == 8.0
    assert kinds["patrol.checkpoint_late"].payload["late_min"] == 12.0
    assert kinds["patrol.checkpoint_missed"].payload["checkpoint"] == "CP-3"
    done = kinds["patrol.round_finished"].payload
    assert done["completion_pct"] == 66.7 and done["escalate"] is True
    assert done["missed"] == ["CP-3"]


def test_a_round_not_started_and_a_strict_round_out_of_order() -> None:
    [rnd] = rounds_between(settings("strict"), ZONE, local(23, 21), local(23, 23))
    [only] = judge(settings("strict"), rnd, [])
    assert only.kind == "patrol.round_not_started"
    walked = [scan("CP-2", local(23, 22, 14)), scan("CP-1", local(23, 22, 16)),
              scan("CP-3", local(23, 22, 31))]  # fmt: skip
    found = {f.kind: f for f in judge(settings("strict"), rnd, walked)}
    assert found["patrol.out_of_order"].payload["walked"] == ["CP-2", "CP-1", "CP-3"]


def test_scan_flags_unknown_duplicate_two_guards_too_fast_burst_skew() -> None:
    s = settings()
    t = local(23, 22)

    def reasons(new: Scan, before: list[Scan], skew: float | None = None) -> set[str]:
        return {str(f.payload["reason"]) for f in flag_scan(s, new, before, skew, True)}

    assert reasons(scan(None, t), []) == {"unknown_tag"}
    first = scan("CP-1", t)
    assert reasons(scan("CP-1", t + timedelta(seconds=30)), [first]) == {"duplicate"}
    other = scan("CP-1", t + timedelta(seconds=20), guard="li")
    assert reasons(other, [first]) == {"two_guards"}
    assert reasons(scan("CP-2", t + timedelta(seconds=10)), [first]) == {"too_fast"}
    assert reasons(scan("CP-2", t + timedelta(minutes=5)), [first], skew=50400) == {"clock_skew"}
    many = [scan("CP-1", t + timedelta(seconds=70 * i), sid=f"b{i}") for i in range(8)]
    assert "burst" in reasons(scan("CP-3", t + timedelta(seconds=70 * 8)), many)
    off = flag_scan(s, scan("CP-1", t), [], None, on_route=False)
    assert [f.payload["reason"] for f in off] == ["off_route"]


def test_the_tracker_finds_a_missed_checkpoint_and_the_alarm_engine_raises_it(
    tmp_path: Path,
) -> None:
    clock = ShiftedClock(local(23, 21, 50).astimezone(UTC))  # tracked from before the round
    plan = load_plan()

    async def body(journal: Journal) -> dict[str, Any]:
        tracker = PatrolTracker(settings(), ZONE, journal, clock)
        alarms = AlarmService(plan, Directory([]), journal, clock, site_name="测试", tick_s=0.05)
        alarm_task = asyncio.create_task(alarms.run())
        wand = {"method": "wand", "guard": "zhang", "clock_skew_s": 50400.0}
        off = timedelta(hours=14)  # the wand's clock is 14 h ahead
        for tag, at, sid in (("0F004EBEFC", local(23, 22, 1), "w1"),
                             ("0F004EBE01", local(23, 22, 15), "w2")):  # fmt: skip
            payload = {**wand, "tag": tag, "scan_id": sid, "scanned_at": (at + off).isoformat()}
            await journal.submit(Event("patrol.scan", "WAND-1", payload, id=f"patrol-scan:{sid}"))
        # a re-download of the same records stores nothing new
        payload = {**wand, "tag": "0F004EBEFC", "scan_id": "w1"}
        await journal.submit(Event("patrol.scan", "WAND-1", payload, id="patrol-scan:w1"))
        await tracker.step()
        assert {s.checkpoint for s in tracker.scans} == {"CP-1", "CP-2"}
        assert tracker.scans[0].at == local(23, 22, 1)  # corrected by the measured skew
        clock.jump(timedelta(minutes=65))  # past the round's last window and the grace
        found = await tracker.step()
        again = await tracker.step()
        deadline = asyncio.get_running_loop().time() + 5
        while "patrol-checkpoint-missed:nights@20261123T2200/CP-3" not in (
            alarms.engine.alarms if alarms.engine else {}
        ):
            assert asyncio.get_running_loop().time() < deadline, "no alarm"
            await asyncio.sleep(0.05)
        # the wand's last record comes in after the judgement: flagged next to it
        late = {**wand, "tag": "0F004EBE02", "scan_id": "w3",
                "scanned_at": (local(23, 22, 31) + off).isoformat()}  # fmt: skip
        await journal.submit(Event("patrol.scan", "WAND-1", late, id="patrol-scan:w3"))
        uploaded_late = [f.payload["reason"] for f in await tracker.step()]
        alarm_task.cancel()
        await asyncio.gather(alarm_task, return_exceptions=True)
        assert alarms.engine is not None
        return {
            "late": uploaded_late,
            "found": sorted(f.kind for f in found),
            "again": again,
            "alarm": alarms.engine.alarms["patrol-checkpoint-missed:nights@20261123T2200/CP-3"],
            "round": alarms.engine.alarms.get("patrol-round-failed:nights@20261123T2200"),
            "skew_flags": sum(1 for f in found if f.payload.get("reason") == "clock_skew"),
        }

    result = with_journal(tmp_path / "journal.db", body)
    assert "patrol.checkpoint_missed" in result["found"]
    assert "patrol.round_finished" in result["found"]
    assert result["again"] == []  # evaluated again: nothing new
    assert result["alarm"].priority == "P3" and result["alarm"].location == "北围墙"
    assert result["round"] is not None and result["round"].priority == "P2"  # 66.7 % < 70 %
    assert "late_upload" in result["late"]


def test_the_shift_report_per_round_and_per_guard() -> None:
    s = settings()
    walked = [
        scan("CP-1", local(23, 22, 1)),
        scan("CP-2", local(23, 22, 27)),
        scan("CP-3", local(23, 22, 31)),
        scan("CP-1", local(24, 0, 2), guard="li"),
    ]
    report = round_report(s, ZONE, walked, local(23, 20), local(24, 8))
    rounds = {r["start"][11:16]: r for r in report["rounds"]}
    assert rounds["22:00"]["completion_pct"] == 100.0 and rounds["22:00"]["late"] == ["CP-2"]
    assert rounds["00:00"]["missed"] == ["CP-2", "CP-3"] and rounds["00:00"]["guards"] == ["li"]
    assert rounds["02:00"]["started"] is False
    assert report["guards"]["zhang"] == {"rounds": 1, "complete": 1, "late": 1, "missed": 0}
    assert report["guards"]["li"]["missed"] == 2
    assert report["totals"]["rounds"] == 4 and report["totals"]["not_started"] == 2


def test_an_alarm_sends_a_guard_to_the_nearest_checkpoint(tmp_path: Path) -> None:
    clock = ShiftedClock(local(23, 14, 0).astimezone(UTC))
    with_near = settings().model_copy(
        update={
            "checkpoints": [
                settings().checkpoints[0].model_copy(update={"near": ["gate-9"]}),
                settings().checkpoints[1].model_copy(update={"near": ["io-north"]}),
                settings().checkpoints[2],
            ]
        }
    )

    async def body(journal: Journal) -> list[str]:
        tracker = PatrolTracker(with_near, ZONE, journal, clock)
        await tracker.step()  # tracking starts
        raised = {"type": "door_forced", "alarm_id": "door-forced:gate-9", "occurrence": "OCC1"}
        await journal.submit(Event("alarm.raised", "gate-9", raised, received_at=clock.now()))
        other = {"type": "perimeter_intrusion", "alarm_id": "beam:io-north/2", "occurrence": "OCC2"}
        await journal.submit(Event("alarm.raised", "io-north", other, received_at=clock.now()))
        ignored = {"type": "sump_high", "alarm_id": "sump:io-north/5", "occurrence": "OCC3"}
        await journal.submit(Event("alarm.raised", "io-north", ignored, received_at=clock.now()))
        first = await tracker.step()
        assert sorted(t["task_id"] for t in tracker.status()["tasks"]) == ["task:OCC1", "task:OCC2"]
        scan_at = clock.now() + timedelta(minutes=4)
        payload = {"tag": "0F004EBEFC", "guard": "zhang", "scan_id": "t1", "method": "wand",
                   "scanned_at": scan_at.isoformat()}  # fmt: skip
        await journal.submit(Event("patrol.scan", "WAND-1", payload, id="patrol-scan:t1"))
        clock.jump(timedelta(minutes=11))
        later = await tracker.step()
        return sorted(f.id for f in first + later if f.kind.startswith("patrol.task"))

    ids = with_journal(tmp_path / "journal.db", body)
    assert ids == [
        "patrol-task:task:OCC1:done",
        "patrol-task:task:OCC1:open",
        "patrol-task:task:OCC2:missed",  # nobody went to CP-2 in 10 minutes
        "patrol-task:task:OCC2:open",
    ]


def test_a_patrol_card_at_a_checkpoint_door_reader_counts_as_a_scan(tmp_path: Path) -> None:
    with_reader = settings().model_copy(
        update={
            "checkpoints": [
                settings().checkpoints[0].model_copy(update={"reader": "N-GATE-1"}),
                *settings().checkpoints[1:],
            ]
        }
    )

    async def body(journal: Journal) -> list[Scan]:
        tracker = PatrolTracker(with_reader, ZONE, journal, ShiftedClock(local(23, 22)))
        await journal.submit(Event("access.granted", "N-GATE-1", {"card": "0f00aa0001"}))
        await journal.submit(
            Event("access.granted", "N-GATE-1", {"card": "12345678"})
        )  # a resident
        await journal.submit(
            Event("access.denied", "S-GATE-1", {"card": "0F00AA0001"})
        )  # no checkpoint
        await tracker.step()
        return tracker.scans

    [only] = with_journal(tmp_path / "journal.db", body)
    assert (only.checkpoint, only.guard, only.method) == ("CP-1", "zhang", "gate")


def test_the_last_stop_can_be_late_within_the_judging_grace() -> None:
    [rnd] = rounds_between(settings(), ZONE, local(23, 21), local(23, 23))
    walked = [scan("CP-1", local(23, 22, 1)), scan("CP-2", local(23, 22, 15)),
              scan("CP-3", local(23, 22, 45))]  # fmt: skip
    kinds = {f.kind: f for f in judge(settings(), rnd, walked)}
    assert kinds["patrol.checkpoint_late"].payload["checkpoint"] == "CP-3"
    assert "patrol.checkpoint_missed" not in kinds
