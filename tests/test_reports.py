"""Guard-room reports on a real journal with an injected clock: each urgency's
countdown and overdue, escalation through the shipped contingency plan, the
hand-over chain, the closed loop (a complaint cannot close without its
follow-up), the resident's contact kept apart and its view audited, central's
ticket updates in the timeline, statistics, and config errors."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.alarms.engine import AlarmEngine
from gateway.alarms.plan import load_plan
from gateway.alarms.rules import Directory
from gateway.auth import Principal
from gateway.clock import ShiftedClock, parse_rfc3339
from gateway.config import load_site_config
from gateway.errors import ConfigError
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.reports.book import NewReport, ReportBook, ReportRefused, _mark_overdue, respond_by
from gateway.reports.model import Commitment, ReportSettings, report_checks
from gateway.reports.privacy import mask_name, mask_phone, scrub_phones
from gateway.reports.stats import (
    follow_up_made,
    follow_up_owed,
    monthly_summary,
    weekly_by_category,
)
from tests.harness.journal import with_journal
from tests.harness.site import write_site

ZONE = ZoneInfo("Asia/Shanghai")
# 10:00 site time on a Monday
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=ZONE).astimezone(UTC)
SETTINGS = ReportSettings()
GUARD = Principal("guard1", "guard")
GUARD2 = Principal("guard2", "guard")
SUP = Principal("sup1", "supervisor")
STAFF = {"guard1": "guard", "guard2": "guard", "sup1": "supervisor", "central1": "central"}

LEAK = NewReport(
    "repair",
    "water",
    "P1",
    "5楼水管爆裂,住户电话 13812345678",
    building="3栋",
    unit="2单元501",
    contact_name="张三",
    contact_phone="13812345678",
)
NOISE = NewReport("complaint", "noise", "P3", "楼上装修噪音", building="5栋", unit="1单元302")


def run_book(tmp_path: Path, body: Callable[[ReportBook, ShiftedClock], Awaitable[Any]]) -> Any:
    async def main(journal: Journal) -> Any:
        clock = ShiftedClock(T0)
        book = ReportBook(SETTINGS, ZONE, journal, clock, STAFF)
        return await body(book, clock)

    return with_journal(tmp_path / "journal.db", main)


def rows(tmp_path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(tmp_path / "journal.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# ---- commitments ------------------------------------------------------------------


def test_respond_by_follows_the_commitments_of_each_urgency() -> None:
    assert respond_by(SETTINGS, "P1", T0, ZONE) == T0 + timedelta(minutes=10)
    assert respond_by(SETTINGS, "P2", T0, ZONE) == T0 + timedelta(minutes=15)
    same_day = respond_by(SETTINGS, "P3", T0, ZONE).astimezone(ZONE)
    assert (same_day.date(), same_day.hour, same_day.minute) == (T0.date(), 22, 0)
    late = datetime(2026, 11, 23, 22, 30, tzinfo=ZONE)
    next_day = respond_by(SETTINGS, "P3", late, ZONE).astimezone(ZONE)
    assert next_day == datetime(2026, 11, 24, 22, 0, tzinfo=ZONE)
    agreed = datetime(2026, 11, 25, 9, 30, tzinfo=ZONE)
    assert respond_by(SETTINGS, "P3", T0, ZONE, agreed) == agreed.astimezone(UTC)


@pytest.mark.parametrize(("urgency", "minutes"), [("P1", 10), ("P2", 15), ("P3", 12 * 60)])
def test_each_urgency_counts_down_and_goes_overdue_once(
    tmp_path: Path, urgency: str, minutes: int
) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(GUARD, NewReport(**{**LEAK.__dict__, "urgency": urgency}))
        due = parse_rfc3339(report.respond_by)
        assert abs((due - T0).total_seconds() - minutes * 60) < 5
        clock.jump(timedelta(minutes=minutes) - timedelta(seconds=30))
        await book.tick()
        assert (await book.get(report.report_id)).overdue_at is None  # type: ignore[union-attr]
        clock.jump(timedelta(seconds=31))
        await book.tick()
        await book.tick()
        late = await book.get(report.report_id)
        assert late is not None and late.overdue_at is not None
        assert [s.what for s in late.timeline] == ["reported", "overdue"]

    run_book(tmp_path, body)
    kinds = rows(tmp_path, "SELECT kind, payload FROM events WHERE kind LIKE 'report.%'")
    assert [k for k, _ in kinds] == ["report.reported", "report.overdue"]
    assert json.loads(kinds[1][1])["urgency"] == urgency


def test_someone_on_scene_in_time_is_never_overdue(tmp_path: Path) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(GUARD, LEAK)
        await book.dispatch(GUARD, report.report_id, "工程部 王师傅", None)
        clock.jump(timedelta(minutes=8))
        await book.on_scene(GUARD, report.report_id, "王师傅已到")
        clock.jump(timedelta(minutes=30))
        await book.tick()
        done = await book.get(report.report_id)
        assert done is not None and done.overdue_at is None and done.state == "on_scene"
        assert done.handler == "工程部 王师傅"

    run_book(tmp_path, body)


def test_an_overdue_report_escalates_like_an_alarm_through_the_plan(tmp_path: Path) -> None:
    """The journal's report.overdue, fed to the engine with the shipped plan, raises a
    P1 alarm that escalates unacknowledged and clears once someone is on scene."""

    async def body(book: ReportBook, clock: ShiftedClock) -> str:
        report = await book.create(GUARD, LEAK)
        clock.jump(timedelta(minutes=11))
        await book.tick()
        clock.jump(timedelta(minutes=5))
        await book.on_scene(GUARD2, report.report_id, None)
        return report.report_id

    report_id = run_book(tmp_path, body)
    events = rows(tmp_path, "SELECT kind, payload, received_at FROM events ORDER BY seq")
    engine = AlarmEngine(load_plan(), Directory([]), site_name="测试小区", started=T0)
    [overdue] = [e for e in events if e[0] == "report.overdue"]
    at = parse_rfc3339(overdue[2])
    engine.on_event(overdue[0], None, json.loads(overdue[1]), at)
    alarm = engine.alarms[f"report-overdue-p1:{report_id}"]
    assert alarm.priority == "P1" and alarm.state == "unacknowledged"
    assert alarm.location == "3栋 2单元501"
    engine.tick(at + timedelta(seconds=61))
    engine.tick(at + timedelta(seconds=301))
    escalated = [e.note for e in alarm.timeline if e.what == "escalated"]
    assert escalated == ["领班 / Shift leader", "保安主管 / Security supervisor"]
    [arrived] = [e for e in events if e[0] == "report.on_scene"]
    engine.on_event(arrived[0], None, json.loads(arrived[1]), parse_rfc3339(arrived[2]))
    assert not alarm.active and alarm.state == "rtn_unacknowledged"
    assert not engine.take().incidents, "the report is the ticket; the alarm opens none"


# ---- first-responder ownership ----------------------------------------------------


def test_the_hand_over_chain_keeps_an_owner_and_records_every_hand(tmp_path: Path) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(GUARD, LEAK)
        rid = report.report_id
        assert report.owner == "guard1"
        with pytest.raises(ReportRefused, match="only the owner"):
            await book.hand_over(GUARD2, rid, "guard2", None)
        with pytest.raises(ReportRefused, match="not a user"):
            await book.hand_over(GUARD, rid, "王师傅", None)
        with pytest.raises(ReportRefused, match="not a user"):
            await book.hand_over(GUARD, rid, "central1", None)
        await book.hand_over(GUARD, rid, "guard2", "交班")
        with pytest.raises(ReportRefused, match="already owns"):
            await book.hand_over(GUARD2, rid, "guard2", None)
        await book.hand_over(SUP, rid, "sup1", "主管接手")  # a supervisor may take it over
        await book.hand_over(SUP, rid, "guard1", None)
        final = await book.get(rid)
        assert final is not None and final.owner == "guard1"
        hands = [(s.by, s.to, s.note) for s in final.timeline if s.what == "handed_over"]
        assert hands == [
            ("guard1", "guard2", "交班"),
            ("sup1", "sup1", "主管接手"),
            ("sup1", "guard1", None),
        ]

    run_book(tmp_path, body)
    audit = rows(tmp_path, "SELECT who, action, target FROM audit WHERE action LIKE 'reports.%'")
    assert [a[1] for a in audit] == ["reports.reported"] + ["reports.handed_over"] * 3


# ---- the closed loop ----------------------------------------------------------------


def test_a_complaint_cannot_close_without_its_follow_up(tmp_path: Path) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(GUARD, NOISE)
        rid = report.report_id
        assert report.follow_up_required
        with pytest.raises(ReportRefused, match="only once resolved"):
            await book.close(SUP, rid, None)
        await book.dispatch(GUARD, rid, "秩序维护员 李", None)
        await book.on_scene(GUARD, rid, None)
        await book.resolve(GUARD, rid, "已劝停")
        with pytest.raises(ReportRefused, match="回访"):
            await book.close(SUP, rid, None)
        await book.follow_up(GUARD, rid, "unreachable", "无人接听")
        with pytest.raises(ReportRefused, match="回访"):
            await book.close(SUP, rid, None)
        reopened = await book.follow_up(GUARD, rid, "unsatisfied", "还在吵")
        assert reopened.state == "dispatched"
        await book.resolve(GUARD, rid, "再次劝停")
        await book.follow_up(GUARD, rid, "satisfied", None)
        closed = await book.close(SUP, rid, "核实关闭")
        assert closed.state == "closed" and closed.supervisor == "sup1"
        with pytest.raises(ReportRefused):
            await book.resolve(GUARD, rid, None)
        steps = [s.what for s in closed.timeline]
        assert steps == [
            "reported",
            "dispatched",
            "on_scene",
            "resolved",
            "followed_up",
            "reopened",
            "resolved",
            "followed_up",
            "closed",
        ]
        assert all(s.at and s.by for s in closed.timeline)

    run_book(tmp_path, body)


def test_a_repair_closes_without_a_follow_up_and_a_duplicate_is_cancelled(
    tmp_path: Path,
) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(GUARD, LEAK)
        await book.resolve(GUARD, report.report_id, None)
        closed = await book.close(SUP, report.report_id, None)
        assert closed.state == "closed" and closed.handler == "guard1"
        twin = await book.create(GUARD2, LEAK)
        assert twin.report_id.endswith("-002")
        cancelled = await book.cancel(SUP, twin.report_id, "重复报事 duplicate of -001")
        assert cancelled.state == "cancelled"
        with pytest.raises(ReportRefused):
            await book.dispatch(GUARD, twin.report_id, "x", None)
        with pytest.raises(KeyError):
            await book.resolve(GUARD, "R-19990101-001", None)

    run_book(tmp_path, body)


# ---- confidentiality ---------------------------------------------------------------


def test_the_residents_contact_is_kept_apart_masked_and_its_view_audited(
    tmp_path: Path,
) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> dict[str, Any]:
        report = await book.create(GUARD, LEAK)
        assert report.reporter_masked == "张* 138****5678"
        incident = book.incident(report)
        assert "13812345678" not in json.dumps(incident, ensure_ascii=False)
        assert "138****5678" in incident["title"]
        assert incident["priority"] == "P1" and incident["type"] == "report_repair"
        return await book.contact(SUP, report.report_id)

    assert run_book(tmp_path, body) == {"name": "张三", "phone": "13812345678"}
    [body_json] = rows(tmp_path, "SELECT body FROM reports")
    events = rows(tmp_path, "SELECT payload FROM events")
    outbox = rows(tmp_path, "SELECT body FROM outbox")
    for text in [body_json[0]] + [e[0] for e in events] + [o[0] for o in outbox]:
        assert "13812345678" not in text and "张三" not in text
    views = rows(tmp_path, "SELECT who, role FROM audit WHERE action = 'reports.contact_view'")
    assert views == [("sup1", "supervisor")]


def test_masking() -> None:
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳娜娜") == "欧***"
    assert mask_phone("+86 138-1234-5678") == "861****5678"
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("6688") == "****"
    assert scrub_phones("call 021-6688 1234 or 13812345678, room 501") == (
        "call 021****1234 or 138****5678, room 501"
    )


# ---- central -----------------------------------------------------------------------


def test_centrals_ticket_updates_appear_in_the_timeline(tmp_path: Path) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(GUARD, LEAK)
        await book.dispatch(GUARD, report.report_id, "工程部", None)
        update = {
            "cursor": "7",
            "ticket_no": "T-2026-000042",
            "incident_id": report.report_id,
            "state": "resolved",
            "note": "更换阀门",
            "at": "2026-11-23T02:20:00+00:00",
        }
        other = {**update, "incident_id": "some-alarm-occurrence", "cursor": "8"}
        for u in (update, other):
            await book.journal.submit(Event("central.ticket_update", None, u))
        await book.tick()
        await book.tick()  # the cursor moved: applied once
        after = await book.get(report.report_id)
        assert after is not None and after.state == "resolved"
        central = [s for s in after.timeline if s.by == "central"]
        assert [(s.what, s.note) for s in central] == [("central_resolved", "更换阀门")]
        assert all(t["by"] != "central" for t in book.incident(after)["timeline"])

    run_book(tmp_path, body)


# ---- statistics --------------------------------------------------------------------


def test_monthly_and_weekly_statistics(tmp_path: Path) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> dict[str, Any]:
        on_time = await book.create(GUARD, LEAK)  # P1, on scene at 5 min
        clock.jump(timedelta(minutes=5))
        await book.on_scene(GUARD, on_time.report_id, None)
        late = await book.create(GUARD, NewReport(**{**LEAK.__dict__, "urgency": "P2"}))
        clock.jump(timedelta(minutes=20))
        await book.on_scene(GUARD, late.report_id, None)
        complaint = await book.create(GUARD, NOISE)
        await book.resolve(GUARD, complaint.report_id, None)
        pending = await book.create(GUARD, NewReport(**{**NOISE.__dict__, "urgency": "P2"}))
        await book.resolve(GUARD, pending.report_id, None)
        await book.follow_up(GUARD, pending.report_id, "satisfied", None)
        clock.jump(timedelta(days=7))
        await book.create(GUARD, LEAK)  # the next week, not yet due: not judged
        start = datetime(2026, 11, 1, tzinfo=ZONE)
        found = await book.between(start, datetime(2026, 12, 1, tzinfo=ZONE))
        assert len(found) == 5
        now = clock.now() - timedelta(days=7) + timedelta(minutes=1)
        return {
            "month": monthly_summary(found, "2026-11", now),
            "weekly": weekly_by_category(found, ZONE),
        }

    stats = run_book(tmp_path, body)
    p1, p2, p3 = stats["month"]["by_urgency"]
    assert (p1["reports"], p1["judged"], p1["on_time"], p1["on_time_pct"]) == (2, 1, 1, 100.0)
    assert p1["avg_min_to_scene"] == pytest.approx(5.0, abs=0.2)
    assert (p2["reports"], p2["judged"], p2["on_time"], p2["on_time_pct"]) == (2, 2, 1, 50.0)
    assert (p3["reports"], p3["on_time"]) == (1, 1)
    assert stats["month"]["follow_up"] == {"owed": 2, "made": 1, "pct": 50.0}
    assert stats["weekly"] == [
        {"week": "2026-11-23", "category": "complaint", "reports": 2},
        {"week": "2026-11-23", "category": "repair", "reports": 2},
        {"week": "2026-11-30", "category": "repair", "reports": 1},
    ]


# ---- configuration -----------------------------------------------------------------


def test_report_config_errors_name_file_key_and_value(tmp_path: Path) -> None:
    settings = ReportSettings(
        commitments={
            "P1": Commitment(name="特急", name_en="x", on_scene_min=10, same_day_until="12:00"),
            "P2": Commitment(name="急", name_en="x", on_scene_min=15),
        }
    )
    assert report_checks(settings, "site.toml") == [
        "site.toml: reports.commitments.P1: set exactly one of on_scene_min and same_day_until",
        "site.toml: reports.commitments.P3: missing (every urgency needs one)",
    ]
    site = write_site(
        tmp_path,
        extra=(
            '\n[[reports.categories]]\nid = "repair"\nname = "报修"\nname_en = "Repair"\n'
            'subcategories = [{ id = "a", name = "甲", name_en = "A" }, '
            '{ id = "a", name = "乙", name_en = "B" }]\n'
            '\n[reports.commitments.P1]\nname = "特急"\nname_en = "Very urgent"\n'
            'on_scene_min = "10"\n'
        ),
    )
    with pytest.raises(ConfigError) as caught:
        load_site_config(site.path)
    text = "\n".join(caught.value.problems)
    assert 'reports.commitments.P1.on_scene_min: "10": input should be a valid number' in text, text


# ---- found in review ----------------------------------------------------------------


def test_a_report_cancelled_or_reached_meanwhile_is_not_marked_overdue(tmp_path: Path) -> None:
    """The tick reads candidates, then writes: a step in between wins (no alarm that
    could never clear, no revision of a closed incident)."""

    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        first = await book.create(GUARD, LEAK)
        second = await book.create(GUARD, LEAK)
        clock.jump(timedelta(minutes=11))
        await book.cancel(SUP, first.report_id, "重复报事")
        await book.on_scene(GUARD, second.report_id, None)
        for report in (first, second):
            with pytest.raises(ReportRefused):
                await book._change(None, report.report_id, "overdue", _mark_overdue)
        await book.tick()
        for report in (first, second):
            final = await book.get(report.report_id)
            assert final is not None and final.overdue_at is None
            assert "overdue" not in [s.what for s in final.timeline]

    run_book(tmp_path, body)


def test_phone_numbers_in_any_free_text_are_masked_everywhere(tmp_path: Path) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(
            GUARD, NewReport(**{**LEAK.__dict__, "unit": "501 13700001111", "description": "漏水"})
        )
        rid = report.report_id
        await book.dispatch(GUARD, rid, "王师傅 13900001111", "回电 13812345678")
        await book.add_note(GUARD, rid, "住户另一号码 021-66881234")
        final = await book.get(rid)
        assert final is not None and final.handler == "王师傅 139****1111"
        assert final.unit is not None and "****" in final.unit and "13700001111" not in final.unit
        incident = book.incident(final)
        assert incident["handler"] == "王师傅 139****1111"

    run_book(tmp_path, body)
    for table, column in (("reports", "body"), ("events", "payload"), ("outbox", "body")):
        for (text,) in rows(tmp_path, f"SELECT {column} FROM {table}"):
            for phone in ("13900001111", "13812345678", "13700001111", "66881234"):
                assert phone not in text, (table, text)
    for reason, detail in rows(tmp_path, "SELECT reason, detail FROM audit"):
        assert "13812345678" not in str(reason) and "13900001111" not in detail


def test_an_unsatisfied_call_owes_a_new_one_and_cancel_needs_nobody_on_scene(
    tmp_path: Path,
) -> None:
    async def body(book: ReportBook, clock: ShiftedClock) -> None:
        report = await book.create(GUARD, NOISE)
        rid = report.report_id
        await book.on_scene(GUARD, rid, None)
        with pytest.raises(ReportRefused, match="only before anyone is on scene"):
            await book.cancel(SUP, rid, "想取消一个超时的")
        await book.resolve(GUARD, rid, None)
        await book.follow_up(GUARD, rid, "unsatisfied", None)
        await book.resolve(GUARD, rid, "再次处理")
        again = await book.get(rid)
        assert again is not None
        assert (again.follow_up_result, again.follow_up_at) == (None, None)
        assert follow_up_owed(again) and not follow_up_made(again)
        with pytest.raises(ReportRefused, match="回访"):
            await book.close(SUP, rid, None)

    run_book(tmp_path, body)
