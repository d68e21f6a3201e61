"""API for guard-room reports (报事/报修): taking them, their closed loop, statistics.

Every step is attributed to the person whose token or session made it and
audited in the same commit; a step that does not apply answers 409 with the
reason a guard can read. What any role sees of the resident is masked
(``张* 138****5678``); the unmasked contact is its own endpoint, for
supervisors only, and every view of it is audited (客户档案管理制度).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.clock import parse_rfc3339
from gateway.errors import JournalError
from gateway.reports.book import NewReport, ReportBook, ReportRefused
from gateway.reports.model import FollowUpResult, Report, ReportSettings
from gateway.reports.stats import (
    follow_up_made,
    follow_up_owed,
    month_window,
    monthly_summary,
    on_time,
    weekly_by_category,
)
from gateway.sync.central_state import tickets
from gateway.web.alarms import NoteIn, ReasonIn, TextIn
from gateway.web.csvfile import excel_csv
from gateway.web.security import require

Short = Annotated[str, Field(min_length=1, max_length=64)]
MONTH = r"^(19[7-9]\d|2\d{3})-(0[1-9]|1[0-2])$"
"""A month of reports, 1970-01 to 2999-12."""


class ReportIn(BaseModel):
    """A report as the guard takes it down."""

    model_config = ConfigDict(extra="forbid")
    category: Short
    subcategory: Short
    urgency: Literal["P1", "P2", "P3"]
    description: str = Field(min_length=2, max_length=1000)
    building: Short | None = None
    unit: Short | None = None
    area: Short | None = None
    channel: Literal["walk_in", "phone", "patrol", "other"] = "walk_in"
    reporter_kind: Literal["resident", "tenant", "visitor", "staff", "anonymous"] = "resident"
    contact_name: str | None = Field(default=None, min_length=1, max_length=40)
    contact_phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 ()-]{2,19}$")
    agreed_time: datetime | None = None
    """With an offset, or without one: then it is site time (what the guard agreed)."""


class ToIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: Short
    note: str | None = Field(default=None, max_length=500)


class FollowUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    result: FollowUpResult
    note: str | None = Field(default=None, max_length=500)


def report_view(
    report: Report, settings: ReportSettings, now: datetime, ticket: Any = None
) -> dict[str, Any]:
    """A report for the screen and the API: names in both languages, the countdown,
    whether the commitment was met, central's ticket; the resident only masked."""
    cat, cat_en, sub, sub_en = settings.names(report.category, report.subcategory)
    commitment = settings.commitments[report.urgency]
    due = parse_rfc3339(report.respond_by)
    view = report.as_json()
    view.update(
        location=report.location,
        category_name=cat,
        category_name_en=cat_en,
        subcategory_name=sub,
        subcategory_name_en=sub_en,
        urgency_name=commitment.name,
        urgency_name_en=commitment.name_en,
        seconds_left=round((due - now).total_seconds()),
        overdue=report.overdue_at is not None,
        on_time=on_time(report, now),
        follow_up_owed=follow_up_owed(report),
        follow_up_made=follow_up_made(report),
        ticket_no=ticket.ticket_no if ticket else None,
        ticket_state=ticket.state if ticket else None,
    )
    return view


def create_report_router(book: ReportBook | None, zone: ZoneInfo) -> APIRouter:
    """Routes under /api/v1/reports."""
    router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

    def reports() -> ReportBook:
        if book is None:
            raise HTTPException(404, "reports are not kept on this gateway")
        return book

    async def views(found: list[Report]) -> list[dict[str, Any]]:
        b = reports()
        ids = [r.report_id for r in found]
        by_id = {t.incident_id: t for t in await b.journal.query(lambda c: tickets(c, ids))}
        now = b.clock.now()
        return [report_view(r, b.settings, now, by_id.get(r.report_id)) for r in found]

    async def step(action: Awaitable[Report]) -> dict[str, Any]:
        try:
            report = await action
        except KeyError as exc:
            raise HTTPException(404, f"no report {exc.args[0]}") from None
        except ReportRefused as exc:
            raise HTTPException(409, str(exc)) from None
        except JournalError as exc:
            raise HTTPException(503, f"not recorded, try again: {exc}") from None
        [view] = await views([report])
        return view

    @router.get("")
    async def list_reports(
        scope: Literal["open", "recent"] = "open",
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        _: Principal = Depends(require("reports.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """Open reports (oldest first), or the most recent whatever their state."""
        b = reports()
        found = await (b.open_reports() if scope == "open" else b.recent(limit))
        return {"reports": await views(found)}

    @router.get("/categories")
    async def categories(
        _: Principal = Depends(require("reports.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """What the form offers: categories, sub-categories, commitments, staff to hand to."""
        b = reports()
        return {
            "categories": [c.model_dump() for c in b.settings.categories],
            "commitments": {k: v.model_dump() for k, v in b.settings.commitments.items()},
            "staff": sorted(name for name, role in b.staff.items() if role != "central"),
        }

    @router.post("", status_code=201)
    async def take(
        body: ReportIn,
        who: Principal = Depends(require("reports.write")),  # noqa: B008
    ) -> dict[str, Any]:
        """Take a report down; the guard who does owns it (首问负责制)."""
        fields = body.model_dump()
        if body.agreed_time is not None:
            agreed = body.agreed_time
            try:  # without an offset it is site time; stored as UTC
                fields["agreed_time"] = (
                    agreed.replace(tzinfo=zone) if agreed.tzinfo is None else agreed
                ).astimezone(UTC)
            except OverflowError:
                raise HTTPException(422, "agreed_time is out of range") from None
        new = NewReport(**fields)
        try:
            reports().validate(new)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return await step(reports().create(who, new))

    @router.get("/stats")
    async def stats(
        month: Annotated[str, Query(pattern=MONTH)],
        _: Principal = Depends(require("reports.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """One month: on-time rate per urgency, follow-up rate, time to scene; per week
        of the month, reports by category."""
        b = reports()
        found = await b.between(*month_window(month, zone))
        summary = monthly_summary(found, month, b.clock.now())
        return {**summary, "weekly": weekly_by_category(found, zone)}

    @router.get("/export.csv")
    async def export(
        month: Annotated[str, Query(pattern=MONTH)],
        table: Literal["register", "summary", "weekly"] = "register",
        _: Principal = Depends(require("reports.read")),  # noqa: B008
    ) -> Response:
        """A month's reports as CSV (UTF-8 with BOM, so Excel shows the Chinese headers)."""
        b = reports()
        found = await b.between(*month_window(month, zone))
        body = _export(table, month, found, await views(found), b.clock.now(), zone)
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="reports-{table}-{month}.csv"'},
        )

    @router.get("/{report_id}")
    async def one(
        report_id: str,
        _: Principal = Depends(require("reports.read")),  # noqa: B008
    ) -> dict[str, Any]:
        found = await reports().get(report_id)
        if found is None:
            raise HTTPException(404, f"no report {report_id}")
        [view] = await views([found])
        return view

    @router.get("/{report_id}/contact")
    async def contact(
        report_id: str,
        response: Response,
        who: Principal = Depends(require("reports.contact")),  # noqa: B008
    ) -> dict[str, Any]:
        """The resident's name and phone, unmasked: supervisors only, every view audited."""
        response.headers["Cache-Control"] = "no-store"  # never kept by a browser or proxy
        try:
            return {"report_id": report_id, **await reports().contact(who, report_id)}
        except KeyError:
            raise HTTPException(404, f"no report {report_id}") from None

    @router.post("/{report_id}/handover")
    async def hand_over(
        report_id: str,
        body: ToIn,
        who: Principal = Depends(require("reports.write")),  # noqa: B008
    ) -> dict[str, Any]:
        """Ownership passes to a named colleague (the owner or a supervisor hands over)."""
        return await step(reports().hand_over(who, report_id, body.to, body.note))

    @router.post("/{report_id}/dispatch")
    async def dispatch(
        report_id: str,
        body: ToIn,
        who: Principal = Depends(require("reports.write")),  # noqa: B008
    ) -> dict[str, Any]:
        """Send someone (an engineer, a team): they become the handler."""
        return await step(reports().dispatch(who, report_id, body.to, body.note))

    @router.post("/{report_id}/on-scene")
    async def on_scene(
        report_id: str,
        body: NoteIn,
        who: Principal = Depends(require("reports.write")),  # noqa: B008
    ) -> dict[str, Any]:
        return await step(reports().on_scene(who, report_id, body.note))

    @router.post("/{report_id}/resolve")
    async def resolve(
        report_id: str,
        body: NoteIn,
        who: Principal = Depends(require("reports.write")),  # noqa: B008
    ) -> dict[str, Any]:
        return await step(reports().resolve(who, report_id, body.note))

    @router.post("/{report_id}/follow-up")
    async def follow_up(
        report_id: str,
        body: FollowUpIn,
        who: Principal = Depends(require("reports.write")),  # noqa: B008
    ) -> dict[str, Any]:
        """The call back to the resident (回访); unsatisfied reopens the report."""
        return await step(reports().follow_up(who, report_id, body.result, body.note))

    @router.post("/{report_id}/close")
    async def close(
        report_id: str,
        body: NoteIn,
        who: Principal = Depends(require("reports.close")),  # noqa: B008
    ) -> dict[str, Any]:
        """A supervisor verifies and closes (refused without a required follow-up)."""
        return await step(reports().close(who, report_id, body.note))

    @router.post("/{report_id}/cancel")
    async def cancel(
        report_id: str,
        body: ReasonIn,
        who: Principal = Depends(require("reports.close")),  # noqa: B008
    ) -> dict[str, Any]:
        """A duplicate or withdrawn report; a supervisor's decision, with a reason."""
        return await step(reports().cancel(who, report_id, body.reason))

    @router.post("/{report_id}/notes")
    async def note(
        report_id: str,
        body: TextIn,
        who: Principal = Depends(require("reports.write")),  # noqa: B008
    ) -> dict[str, Any]:
        return await step(reports().add_note(who, report_id, body.text))

    return router


def _export(
    table: str,
    month: str,
    found: list[Report],
    views: list[dict[str, Any]],
    now: datetime,
    zone: ZoneInfo,
) -> bytes:
    if table == "summary":
        summary = monthly_summary(found, month, now)
        rows: list[list[Any]] = [
            [month, r["urgency"], r["reports"], r["judged"], r["on_time"], r["on_time_pct"],
             r["avg_min_to_scene"]]
            for r in summary["by_urgency"]
        ]  # fmt: skip
        follow = summary["follow_up"]
        rows.append([month, "回访 follow-up", follow["owed"], follow["owed"], follow["made"],
                     follow["pct"], None])  # fmt: skip
        return excel_csv(
            ["月份 month", "紧急程度 urgency", "报事数 reports", "应考核 judged",
             "按时 on time", "按时率% on-time %", "平均到场分钟 avg min to scene"],
            rows,
        )  # fmt: skip
    if table == "weekly":
        weekly = weekly_by_category(found, zone)
        return excel_csv(
            ["周一 week of", "类别 category", "报事数 reports"],
            [[w["week"], w["category"], w["reports"]] for w in weekly],
        )

    def local(stamp: str | None) -> str | None:
        """Site time, as the office reads it (2026-11-23 10:05)."""
        return parse_rfc3339(stamp).astimezone(zone).strftime("%Y-%m-%d %H:%M") if stamp else None

    return excel_csv(
        ["编号 id", "时间 reported", "类别 category", "子类 subcategory", "紧急程度 urgency",
         "位置 location", "状态 state", "应到场 respond by", "到场 on scene", "按时 on time",
         "首问 owner", "处理人 handler", "主管 supervisor", "回访 follow-up", "关闭 closed",
         "工单号 ticket"],
        [
            [v["report_id"], local(v["created_at"]), v["category_name"], v["subcategory_name"],
             v["urgency"], v["location"], v["state"], local(v["respond_by"]),
             local(v["on_scene_at"]), {True: "是 yes", False: "否 no", None: ""}[v["on_time"]],
             v["owner"], v["handler"], v["supervisor"], v["follow_up_result"] or "",
             local(v["closed_at"]), v["ticket_no"]]
            for v in views
        ],
    )  # fmt: skip
