"""The report book: taking a report, its closed loop, overdue, central's updates.

Every change to a report is one journal write: the report's new state, a
``report.*`` event (for the alarm engine and the record), the incident
revision for central's ticket system (outbox, same commit) and the audit row.
So after a crash the guard sees exactly what was recorded, central receives
every revision once, and the audit trail never disagrees with the record.

First-responder ownership (首问负责制): the guard who takes a report owns it
until they hand it to a named colleague; ownership is never empty. The
resident's contact is stored apart and read only through :meth:`contact`,
which audits the view in the same commit.

A background part (:meth:`run`) marks reports whose on-scene commitment has
passed (``report.overdue``, which the contingency plan turns into an alarm
that escalates like any other) and copies central's ticket updates into the
report's timeline (the engineer's resolution).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.audit import insert_audit
from gateway.auth import Principal
from gateway.clock import Clock, parse_rfc3339, to_rfc3339
from gateway.events import Event
from gateway.journal.store import Journal, insert_events
from gateway.reports.model import (
    INCIDENT_STATE,
    FollowUpResult,
    Report,
    ReportSettings,
    Step,
    Urgency,
)
from gateway.reports.privacy import find_phones, mask_name, mask_phone, scrub_phones
from gateway.supervisor import PartFactory
from gateway.sync import outbox
from gateway.sync.central_state import get_cursor, set_cursor
from gateway.sync.side import incident_item

log = logging.getLogger(__name__)

CURSOR = "reports.cursor"
CENTRAL = "central"
GATEWAY = "gateway"
_WAITING = ("open", "dispatched", "on_scene")
AGREED_WITHIN = timedelta(days=31)


class ReportRefused(Exception):
    """The action does not apply to the report as it is (answered 409)."""


@dataclass(frozen=True)
class NewReport:
    """What the guard writes down when a resident reports something."""

    category: str
    subcategory: str
    urgency: Urgency
    description: str
    building: str | None = None
    unit: str | None = None
    area: str | None = None
    channel: str = "walk_in"
    reporter_kind: str = "resident"
    contact_name: str | None = None
    contact_phone: str | None = None
    agreed_time: datetime | None = None


def respond_by(
    settings: ReportSettings,
    urgency: Urgency,
    created: datetime,
    zone: ZoneInfo,
    agreed: datetime | None = None,
) -> datetime:
    """When someone must be on scene: minutes for P1/P2; for P3 the agreed time,
    else the configured time of the same day (the next day's once it has passed)."""
    commitment = settings.commitments[urgency]
    if commitment.on_scene_min is not None:
        return created + timedelta(minutes=float(commitment.on_scene_min))
    if agreed is not None:
        return agreed.astimezone(UTC)
    assert commitment.same_day_until is not None  # report_checks: exactly one is set
    hour, minute = (int(p) for p in commitment.same_day_until.split(":"))
    local = created.astimezone(zone)
    due = datetime.combine(local.date(), time(hour, minute), tzinfo=zone)
    if due <= local:
        due = datetime.combine(local.date() + timedelta(days=1), time(hour, minute), tzinfo=zone)
    return due.astimezone(UTC)


class ReportBook:
    """The site's reports (see the module docstring)."""

    def __init__(
        self,
        settings: ReportSettings,
        zone: ZoneInfo,
        journal: Journal,
        clock: Clock,
        staff: Mapping[str, str],
        on_incident: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.zone = zone
        self.journal = journal
        self.clock = clock
        self.staff = dict(staff)
        """User name → role of everyone a report may be handed to."""
        self.on_incident = on_incident

    def parts(self) -> list[tuple[str, PartFactory]]:
        return [("reports", self.run)]

    async def run(self) -> None:
        while True:
            await self.tick()
            await self.clock.sleep(float(self.settings.watch_interval_s))

    async def tick(self) -> None:
        """Copy central's ticket updates in, then mark what has become overdue."""
        # Read first: the writer is only asked when central sent something new.
        while await self.journal.query(_central_pending):
            await self.journal.write(self._apply_central)
        now = self.clock.now()
        for report in await self.journal.query(_open_reports):
            if _waiting_past(report, now):
                # Checked again inside the write: a guard may have marked it on scene,
                # resolved or cancelled it since the query (then nothing is recorded).
                with contextlib.suppress(ReportRefused, KeyError):
                    await self._change(None, report.report_id, "overdue", _mark_overdue)

    # ---- taking a report ---------------------------------------------------------

    def validate(self, new: NewReport) -> None:
        """Refuse a report the site's categories or commitments cannot take (ValueError)."""
        category = self.settings.category(new.category)
        if category is None:
            raise ValueError(f"category {new.category!r} is not one of this site's")
        if all(s.id != new.subcategory for s in category.subcategories):
            raise ValueError(f"sub-category {new.subcategory!r} is not one of {category.id!r}'s")
        if not (new.building or new.area):
            raise ValueError("say where: a building (and unit) or a public area")
        if new.agreed_time is not None:
            if self.settings.commitments[new.urgency].on_scene_min is not None:
                raise ValueError(f"{new.urgency} has a fixed time to scene; agree times for P3")
            now = self.clock.now()
            if new.agreed_time <= now:
                raise ValueError("the agreed time has already passed")
            if new.agreed_time > now + AGREED_WITHIN:
                raise ValueError("agree a time within 31 days (a later job is planned work)")

    async def create(self, who: Principal, new: NewReport) -> Report:
        """Record a report; the guard who takes it owns it (首问负责制)."""
        self.validate(new)
        typed = find_phones(new.description)
        if typed:  # numbers typed into the description are the resident's: keep them apart
            phones = ([new.contact_phone] if new.contact_phone else []) + typed
            new = replace(
                new,
                description=scrub_phones(new.description),
                contact_phone=", ".join(dict.fromkeys(phones)),
            )
        new = replace(
            new,
            building=_scrubbed(new.building),
            unit=_scrubbed(new.unit),
            area=_scrubbed(new.area),
        )
        now = self.clock.now()
        stamp = to_rfc3339(now)
        category = self.settings.category(new.category)
        assert category is not None
        masked = " ".join(
            p
            for p in (
                mask_name(new.contact_name) if new.contact_name else None,
                mask_phone(new.contact_phone) if new.contact_phone else None,
            )
            if p
        )

        def op(conn: sqlite3.Connection) -> Report:
            day = now.astimezone(self.zone).strftime("%Y%m%d")
            count = conn.execute(
                "SELECT count(*) FROM reports WHERE report_id LIKE ?", (f"R-{day}-%",)
            ).fetchone()[0]
            report = Report(
                report_id=f"R-{day}-{count + 1:03d}",
                category=new.category,
                subcategory=new.subcategory,
                urgency=new.urgency,
                description=new.description,
                building=new.building,
                unit=new.unit,
                area=new.area,
                channel=new.channel,
                reporter_kind=new.reporter_kind,
                reporter_masked=masked or None,
                created_at=stamp,
                created_by=who.name,
                respond_by=to_rfc3339(
                    respond_by(self.settings, new.urgency, now, self.zone, new.agreed_time)
                ),
                agreed_time=to_rfc3339(new.agreed_time.astimezone(UTC))
                if new.agreed_time
                else None,
                owner=who.name,
                follow_up_required=category.follow_up,
            )
            if new.contact_name or new.contact_phone:
                conn.execute(
                    "INSERT INTO report_contacts (report_id, name, phone) VALUES (?, ?, ?)",
                    (report.report_id, new.contact_name, new.contact_phone),
                )
            self._record(conn, report, Step(stamp, "reported", who.name), who, now)
            return report

        report = await self.journal.write(op)
        log.info(
            "report taken id=%s category=%s/%s urgency=%s by=%s",
            report.report_id,
            report.category,
            report.subcategory,
            report.urgency,
            who.name,
        )
        self._wake()
        return report

    # ---- the closed loop ---------------------------------------------------------

    async def hand_over(self, who: Principal, report_id: str, to: str, note: str | None) -> Report:
        """Ownership passes to a named colleague; only the owner or a supervisor hands over."""
        if to not in self.staff or self.staff[to] == "central":
            raise ReportRefused(f"{to!r} is not a user of this gateway; hand over to a named one")

        def apply(report: Report, now: str) -> None:
            _require(report, "be handed over", *_WAITING, "resolved")
            if who.name != report.owner and who.role not in ("supervisor", "admin"):
                raise ReportRefused(f"only the owner ({report.owner}) or a supervisor hands over")
            if to == report.owner:
                raise ReportRefused(f"{to} already owns {report.report_id}")
            report.owner = to

        return await self._change(who, report_id, "handed_over", apply, to=to, note=note)

    async def dispatch(self, who: Principal, report_id: str, to: str, note: str | None) -> Report:
        """Someone (a named engineer, a team) is sent: they become the handler."""
        to = scrub_phones(to)  # a phone typed with the name stays on the phone

        def apply(report: Report, now: str) -> None:
            _require(report, "be dispatched", "open", "dispatched", "on_scene")
            report.handler = to
            if report.state == "open":
                report.state = "dispatched"

        return await self._change(who, report_id, "dispatched", apply, to=to, note=note)

    async def on_scene(self, who: Principal, report_id: str, note: str | None) -> Report:
        def apply(report: Report, now: str) -> None:
            _require(report, "have someone arrive", "open", "dispatched")
            report.state = "on_scene"
            report.on_scene_at = report.on_scene_at or now
            report.handler = report.handler or who.name

        return await self._change(who, report_id, "on_scene", apply, note=note)

    async def resolve(self, who: Principal, report_id: str, note: str | None) -> Report:
        def apply(report: Report, now: str) -> None:
            _require(report, "be resolved", "open", "dispatched", "on_scene")
            _resolved(report, now)
            report.handler = report.handler or who.name

        return await self._change(who, report_id, "resolved", apply, note=note)

    async def follow_up(
        self, who: Principal, report_id: str, result: FollowUpResult, note: str | None
    ) -> Report:
        """The call back to the resident (回访). Unsatisfied reopens the report."""

        def apply(report: Report, now: str) -> None:
            _require(report, "be followed up (only once resolved)", "resolved")
            report.follow_up_result = result
            report.follow_up_at = now
            if result == "unsatisfied":  # more work, then a new call (the timeline keeps this one)
                report.state = "dispatched" if report.handler else "open"
                report.resolved_at = None
                report.follow_up_result = report.follow_up_at = None

        what = "reopened" if result == "unsatisfied" else "followed_up"
        return await self._change(who, report_id, what, apply, note=_join(result, note))

    async def close(self, who: Principal, report_id: str, note: str | None) -> Report:
        """A supervisor verifies and closes; a follow-up is required where the category says."""

        def apply(report: Report, now: str) -> None:
            _require(report, "be closed (only once resolved)", "resolved")
            if report.follow_up_required and not report.follow_up_done:
                raise ReportRefused(
                    f"{report.report_id} needs its follow-up call (回访) with the resident first"
                )
            report.state = "closed"
            report.closed_at = now
            report.supervisor = who.name

        return await self._change(who, report_id, "closed", apply, note=note)

    async def cancel(self, who: Principal, report_id: str, reason: str) -> Report:
        """A duplicate or withdrawn report; a supervisor's decision, with a reason."""

        def apply(report: Report, now: str) -> None:
            # Once someone went, the report counts (on time or late): it is closed, not cancelled.
            _require(report, "be cancelled (only before anyone is on scene)", "open", "dispatched")
            report.state = "cancelled"
            report.closed_at = now
            report.supervisor = who.name

        return await self._change(who, report_id, "cancelled", apply, note=reason)

    async def add_note(self, who: Principal, report_id: str, text: str) -> Report:
        return await self._change(who, report_id, "note", lambda r, now: None, note=text)

    # ---- reading -----------------------------------------------------------------

    async def get(self, report_id: str) -> Report | None:
        return await self.journal.query(lambda conn: _load(conn, report_id))

    async def open_reports(self) -> list[Report]:
        """Every report not yet closed or cancelled, oldest first."""
        return await self.journal.query(_open_reports)

    async def recent(self, limit: int = 200) -> list[Report]:
        """The newest reports first, whatever their state."""
        return await self.journal.query(lambda conn: _recent(conn, limit))

    async def between(self, start: datetime, end: datetime) -> list[Report]:
        """Reports taken in [start, end) (for statistics)."""
        return await self.journal.query(
            lambda conn: _created_between(
                conn, to_rfc3339(start.astimezone(UTC)), to_rfc3339(end.astimezone(UTC))
            )
        )

    async def contact(self, who: Principal, report_id: str) -> dict[str, str | None]:
        """The resident's name and phone, unmasked; the view is audited in its commit."""

        def op(conn: sqlite3.Connection) -> dict[str, str | None]:
            if _load(conn, report_id) is None:
                raise KeyError(report_id)
            row = conn.execute(
                "SELECT name, phone FROM report_contacts WHERE report_id = ?", (report_id,)
            ).fetchone()
            insert_audit(conn, who, "reports.contact_view", report_id)
            return {"name": row[0] if row else None, "phone": row[1] if row else None}

        return await self.journal.write(op)

    def incident(self, report: Report) -> dict[str, Any]:
        """The report as the contract's incident object: no resident data, phones scrubbed."""
        cat, cat_en, sub, sub_en = self.settings.names(report.category, report.subcategory)
        text = scrub_phones(" ".join(report.description.split()))
        text = text if len(text) <= 80 else text[:79] + "…"
        return {
            "incident_id": report.report_id,
            "revision": report.revision,
            "type": f"report_{report.category}",
            "priority": report.urgency,
            "title": f"{cat}·{sub} {report.location}: {text} / {cat_en} · {sub_en}",
            "location": report.location or None,
            "state": INCIDENT_STATE[report.state],
            "opened_at": report.created_at,
            "respond_by": report.respond_by,
            "updated_at": report.timeline[-1].at,
            "handler": report.handler,
            "supervisor": report.supervisor,
            "timeline": [
                {"at": s.at, "what": f"{s.what} → {s.to}" if s.to else s.what, "by": s.by}
                for s in report.timeline
                if s.by != CENTRAL
            ],
        }

    # ---- recording ---------------------------------------------------------------

    async def _change(
        self,
        who: Principal | None,
        report_id: str,
        what: str,
        apply: Callable[[Report, str], None],
        *,
        to: str | None = None,
        note: str | None = None,
    ) -> Report:
        now = self.clock.now()
        stamp = to_rfc3339(now)
        by = who.name if who else GATEWAY
        # Free text goes to every screen, the audit trail and central: no phone numbers.
        to, note = _scrubbed(to), _scrubbed(note)

        def op(conn: sqlite3.Connection) -> Report:
            report = _load(conn, report_id)
            if report is None:
                raise KeyError(report_id)
            apply(report, stamp)
            self._record(conn, report, Step(stamp, what, by, to, note), who, now)
            return report

        report = await self.journal.write(op)
        log.info("report %s id=%s state=%s by=%s", what, report_id, report.state, by)
        self._wake()
        return report

    def _record(
        self,
        conn: sqlite3.Connection,
        report: Report,
        step: Step,
        who: Principal | None,
        now: datetime,
    ) -> None:
        """Store the report, its event, its incident revision and the audit row."""
        report.timeline.append(step)
        report.revision += 1
        _store(conn, report)
        insert_events(conn, [_event(report, step, now)])
        outbox.enqueue(conn, [incident_item(self.incident(report))], step.at)
        if who is not None:
            detail = {"state": report.state, "to": step.to} if step.to else {"state": report.state}
            insert_audit(
                conn, who, f"reports.{step.what}", report.report_id, reason=step.note, detail=detail
            )

    def _apply_central(self, conn: sqlite3.Connection) -> None:
        """Copy one batch of central's ticket updates into report timelines."""
        cursor = int(get_cursor(conn, CURSOR, "0"))
        rows = conn.execute(
            "SELECT seq, payload, received_at FROM events "
            "WHERE kind = 'central.ticket_update' AND seq > ? ORDER BY seq LIMIT 200",
            (cursor,),
        ).fetchall()
        for seq, payload, received_at in rows:
            cursor = seq
            update = json.loads(payload)
            report = _load(conn, str(update.get("incident_id") or ""))
            if report is None:
                continue  # an alarm's incident, or one this gateway no longer has
            state = str(update.get("state") or "updated")
            at = str(update.get("at") or received_at)
            step = Step(at, f"central_{state}", CENTRAL, note=update.get("note"))
            report.timeline.append(step)
            if state in ("resolved", "closed") and report.state in _WAITING:
                _resolved(report, at)
                insert_events(
                    conn,
                    [_event(report, Step(at, "resolved", CENTRAL), parse_rfc3339(received_at))],
                )
            _store(conn, report)
        if rows:
            set_cursor(conn, CURSOR, str(cursor))

    def _wake(self) -> None:
        if self.on_incident is not None:
            self.on_incident()


def _waiting_past(report: Report, now: datetime) -> bool:
    """Nobody on scene yet, the commitment passed, and not yet marked overdue."""
    return (
        report.state in ("open", "dispatched")
        and report.on_scene_at is None
        and report.overdue_at is None
        and parse_rfc3339(report.respond_by) <= now
    )


def _mark_overdue(report: Report, now: str) -> None:
    if not _waiting_past(report, parse_rfc3339(now)):
        raise ReportRefused(f"{report.report_id} is no longer waiting past its commitment")
    report.overdue_at = now


def _scrubbed(text: str | None) -> str | None:
    return None if text is None else scrub_phones(text)


def _resolved(report: Report, now: str) -> None:
    report.state = "resolved"
    report.resolved_at = now


def _require(report: Report, action: str, *states: str) -> None:
    if report.state not in states:
        raise ReportRefused(f"{report.report_id} is {report.state}; it cannot {action}")


def _central_pending(conn: sqlite3.Connection) -> bool:
    """Whether central's ticket feed has an update the reports have not seen."""
    cursor = int(get_cursor(conn, CURSOR, "0"))
    return (
        conn.execute(
            "SELECT 1 FROM events WHERE kind = 'central.ticket_update' AND seq > ? LIMIT 1",
            (cursor,),
        ).fetchone()
        is not None
    )


def _join(result: str, note: str | None) -> str:
    return f"{result}: {note}" if note else result


def _event(report: Report, step: Step, now: datetime) -> Event:
    """A report's step as a journal event: no resident data, stable id per step."""
    return Event(
        f"report.{step.what}",
        None,
        {
            "report_id": report.report_id,
            "category": report.category,
            "subcategory": report.subcategory,
            "urgency": report.urgency,
            "where": report.location,
            "state": report.state,
            "owner": report.owner,
            "handler": report.handler,
            "by": step.by,
            "to": step.to,
        },
        received_at=now,
        id=f"report:{report.report_id}:{len(report.timeline)}",
    )


def _store(conn: sqlite3.Connection, report: Report) -> None:
    conn.execute(
        "INSERT INTO reports (report_id, created_at, state, body) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (report_id) DO UPDATE SET state = excluded.state, body = excluded.body",
        (
            report.report_id,
            report.created_at,
            report.state,
            json.dumps(report.as_json(), ensure_ascii=False, separators=(",", ":")),
        ),
    )


def _load(conn: sqlite3.Connection, report_id: str) -> Report | None:
    row = conn.execute("SELECT body FROM reports WHERE report_id = ?", (report_id,)).fetchone()
    return None if row is None else Report.from_json(json.loads(row[0]))


def _open_reports(conn: sqlite3.Connection) -> list[Report]:
    rows = conn.execute(
        "SELECT body FROM reports WHERE state NOT IN ('closed', 'cancelled') ORDER BY created_at"
    ).fetchall()
    return [Report.from_json(json.loads(r[0])) for r in rows]


def _recent(conn: sqlite3.Connection, limit: int) -> list[Report]:
    rows = conn.execute(
        "SELECT body FROM reports ORDER BY created_at DESC LIMIT ?", (limit,)
    ).fetchall()
    return [Report.from_json(json.loads(r[0])) for r in rows]


def _created_between(conn: sqlite3.Connection, start: str, end: str) -> list[Report]:
    rows = conn.execute(
        "SELECT body FROM reports WHERE created_at >= ? AND created_at < ? ORDER BY created_at",
        (start, end),
    ).fetchall()
    return [Report.from_json(json.loads(r[0])) for r in rows]
