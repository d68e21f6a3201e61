"""Shift handover (交接班): one action makes the record the seeds ask for.

The outgoing guard presses one button: the gateway freezes the equipment
state, the unresolved alarms and incidents (with central's ticket numbers),
the open guard-room reports with their owners, the shift's audit trail (every
privileged action since the previous record),
car parks, sync, the guard's notes and the staffing into a record, signed by
that guard's login. The incoming guard signs it with their own login (not the
same person: the outgoing guard does not leave until relieved). Both steps
are journalled and audited; the record is printable at ``/handovers/{id}``.

Not synced to central: the central API (../shared/contracts/central-api.md)
has no endpoint for records, and we speak that contract exactly.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from gateway.alarms.service import AlarmService
from gateway.audit import insert_audit
from gateway.auth import Principal
from gateway.clock import to_rfc3339, utc_now
from gateway.events import Event, new_event_id
from gateway.journal.store import Journal, insert_events
from gateway.reports.book import ReportBook
from gateway.sync.central_state import tickets
from gateway.web.screen import SiteStatus
from gateway.web.security import require

_UNRESOLVED = ("unacknowledged", "acknowledged", "rtn_unacknowledged")
_HIDDEN = ("shelved", "suppressed", "out_of_service")


class HandoverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notes: str = Field(default="", max_length=4000)
    staffing: str = Field(default="", max_length=1000)
    """Who is on duty, who is absent or replaced (人员变动)."""


def _alarm_line(view: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "alarm_id", "name", "name_en", "priority", "state", "location", "raised_at",
        "acked_by", "handler", "shelve_reason", "shelved_until", "suppressed", "out_of_service",
    )  # fmt: skip
    line = {k: view.get(k) for k in keys}
    steps = view.get("steps") or []
    line["steps_done"] = sum(1 for s in steps if s["done_at"])
    line["steps_total"] = len(steps)
    return line


AUDIT_ROWS_MAX = 1000


def _attach_audit(conn: sqlite3.Connection, record: dict[str, Any]) -> None:
    """The shift's audit trail (every row since the previous record), in the record:
    who did what privileged during the shift travels with the handover."""
    last = conn.execute(
        "SELECT body FROM handovers ORDER BY created_at DESC, rowid DESC LIMIT 1"
    ).fetchone()
    since = int(json.loads(last[0]).get("audit_through", 0)) if last else 0
    rows = conn.execute(
        "SELECT seq, at, who, role, action, target, reason FROM audit WHERE seq > ? "
        "ORDER BY seq LIMIT ?",
        (since, AUDIT_ROWS_MAX + 1),
    ).fetchall()
    keys = ("seq", "at", "who", "role", "action", "target", "reason")
    record["audit"] = [dict(zip(keys, tuple(r), strict=True)) for r in rows[:AUDIT_ROWS_MAX]]
    record["audit_truncated"] = len(rows) > AUDIT_ROWS_MAX
    through = record["audit"][-1]["seq"] if record["audit"] else since
    record["audit_through"] = through


def _store(conn: sqlite3.Connection, record: dict[str, Any], who: Principal) -> None:
    _attach_audit(conn, record)
    conn.execute(
        "INSERT INTO handovers (id, created_at, outgoing, body) VALUES (?, ?, ?, ?)",
        (
            record["id"],
            record["created_at"],
            who.name,
            json.dumps(record, ensure_ascii=False, separators=(",", ":")),
        ),
    )
    insert_events(conn, [Event("handover.created", None, {"id": record["id"], "by": who.name})])
    insert_audit(conn, who, "handover.create", record["id"])


def _sign(conn: sqlite3.Connection, handover_id: str, who: Principal, now: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT outgoing, incoming FROM handovers WHERE id = ?", (handover_id,)
    ).fetchone()
    if row is None:
        raise KeyError(handover_id)
    if row[1] is not None:
        raise ValueError(f"already signed by {row[1]}")
    if row[0] == who.name:
        raise ValueError("the incoming guard signs with their own login, not the outgoing one")
    conn.execute(
        "UPDATE handovers SET incoming = ?, signed_at = ? WHERE id = ?",
        (who.name, now, handover_id),
    )
    insert_events(conn, [Event("handover.signed", None, {"id": handover_id, "by": who.name})])
    insert_audit(conn, who, "handover.sign", handover_id)
    return read_handover(conn, handover_id)


def read_handover(conn: sqlite3.Connection, handover_id: str) -> dict[str, Any]:
    """One record with its signatures; KeyError if there is none."""
    row = conn.execute(
        "SELECT body, incoming, signed_at FROM handovers WHERE id = ?", (handover_id,)
    ).fetchone()
    if row is None:
        raise KeyError(handover_id)
    return {**json.loads(row[0]), "incoming": row[1], "signed_at": row[2]}


def _list(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, created_at, outgoing, incoming, signed_at FROM handovers "
        "ORDER BY created_at DESC LIMIT 50"
    ).fetchall()
    keys = ("id", "created_at", "outgoing", "incoming", "signed_at")
    return [dict(zip(keys, tuple(row), strict=True)) for row in rows]


class Handovers:
    """Builds and stores handover records."""

    def __init__(
        self,
        journal: Journal,
        site: SiteStatus,
        alarms: AlarmService | None,
        reports: ReportBook | None = None,
    ) -> None:
        self.journal = journal
        self.site = site
        self.alarms = alarms
        self.reports = reports

    async def _open_reports(self) -> list[dict[str, Any]]:
        """Reports not yet closed, with their owner: ownership does not end with
        the shift (首问负责制), so the incoming guard sees who still owns what."""
        if self.reports is None:
            return []
        found = await self.reports.open_reports()
        ids = [r.report_id for r in found]
        by_id = {t.incident_id: t for t in await self.journal.query(lambda c: tickets(c, ids))}
        lines = []
        for r in found:
            cat, cat_en, sub, sub_en = self.reports.settings.names(r.category, r.subcategory)
            ticket = by_id.get(r.report_id)
            lines.append(
                {
                    "report_id": r.report_id,
                    "urgency": r.urgency,
                    "kind": f"{cat}·{sub}",
                    "kind_en": f"{cat_en} · {sub_en}",
                    "location": r.location,
                    "state": r.state,
                    "owner": r.owner,
                    "handler": r.handler,
                    "respond_by": r.respond_by,
                    "overdue": r.overdue_at is not None and r.on_scene_at is None,
                    "ticket_no": ticket.ticket_no if ticket else None,
                }
            )
        return lines

    async def create(self, who: Principal, notes: str, staffing: str) -> dict[str, Any]:
        views = self.alarms.views() if self.alarms else []
        unresolved = [v for v in views if v["state"] in _UNRESOLVED]
        hidden = [v for v in views if v["state"] in _HIDDEN]
        occurrences = [v["occurrence"] for v in views if v["incident"] and v["occurrence"]]
        found = await self.journal.query(lambda conn: tickets(conn, occurrences))
        by_incident = {t.incident_id: t for t in found}
        incidents = [
            {
                "incident_id": v["occurrence"],
                "alarm": v["name"],
                "location": v["location"],
                "state": v["state"],
                "ticket_no": by_incident[v["occurrence"]].ticket_no
                if v["occurrence"] in by_incident
                else None,
            }
            for v in unresolved + hidden
            if v["incident"] and v["occurrence"]
        ]
        record = {
            "id": f"HO-{new_event_id()}",
            "created_at": to_rfc3339(utc_now()),
            "outgoing": who.name,
            "outgoing_name": who.display_name or who.name,
            "equipment": await self.site.snapshot(),
            "unresolved_alarms": [_alarm_line(v) for v in unresolved],
            "hidden_alarms": [_alarm_line(v) for v in hidden],
            "incidents": incidents,
            "open_reports": await self._open_reports(),
            "patrol": self.site.patrol.status() if self.site.patrol is not None else None,
            "notes": notes,
            "staffing": staffing,
        }
        await self.journal.write(lambda conn: _store(conn, record, who))  # adds the audit
        return {**record, "incoming": None, "signed_at": None}


def create_handover_router(handovers: Handovers) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["handover"])
    journal = handovers.journal

    @router.post("/handovers")
    async def create(
        body: HandoverIn,
        who: Principal = Depends(require("handover.write")),  # noqa: B008
    ) -> dict[str, Any]:
        """The outgoing guard's record of the shift, signed by their login."""
        return await handovers.create(who, body.notes, body.staffing)

    @router.post("/handovers/{handover_id}/sign")
    async def sign(
        handover_id: str,
        who: Principal = Depends(require("handover.write")),  # noqa: B008
    ) -> dict[str, Any]:
        """The incoming guard takes over (their own login, not the outgoing one)."""
        now = to_rfc3339(utc_now())
        try:
            return await journal.write(lambda conn: _sign(conn, handover_id, who, now))
        except KeyError:
            raise HTTPException(404, f"no handover {handover_id}") from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None

    @router.get("/handovers")
    async def recent(_: Principal = Depends(require("handover.read"))) -> dict[str, Any]:  # noqa: B008
        return {"handovers": await journal.query(_list)}

    @router.get("/handovers/{handover_id}")
    async def one(
        handover_id: str,
        _: Principal = Depends(require("handover.read")),  # noqa: B008
    ) -> dict[str, Any]:
        try:
            return await journal.query(lambda conn: read_handover(conn, handover_id))
        except KeyError:
            raise HTTPException(404, f"no handover {handover_id}") from None

    return router
