"""API for alarms: the board, the operator's actions, KPIs and the live stream.

Every action is attributed to the person whose token made it, audited in the
same commit as the transition it causes, and refused with 409 when it does
not apply (acknowledging an acknowledged alarm). The board lists P1 alarms
first and never groups them; in flood mode lower priorities come grouped by
type and area with the first-out marked.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.alarms.engine import AlarmEngine, AlarmRefused
from gateway.alarms.kpis import per_hour, shift_kpis, shift_window
from gateway.alarms.service import AlarmService
from gateway.auth import Principal
from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.errors import JournalError
from gateway.sync.central_state import tickets
from gateway.web.params import UtcDatetime
from gateway.web.security import require

KEEPALIVE_S = 15.0
_ORDER = {"P1": 0, "P2": 1, "P3": 2, "P4": 3}
_STATE_ORDER = {"unacknowledged": 0, "rtn_unacknowledged": 1, "acknowledged": 2}


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=500)


class TextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=2000)


class ShelveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=2, max_length=500)
    duration_s: int = Field(ge=1, le=7 * 86_400)


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=2, max_length=500)


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    handler: str | None = Field(default=None, min_length=1, max_length=64)
    supervisor: str | None = Field(default=None, min_length=1, max_length=64)


class OutageIn(BaseModel):
    """A planned cut announced to residents (the 24-hours-ahead notice)."""

    model_config = ConfigDict(extra="forbid")
    utility: Literal["electricity", "water", "gas"]
    scope: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    reason: str = Field(min_length=2, max_length=500)


def board(views: list[dict[str, Any]], flood: bool) -> dict[str, Any]:
    """Shown alarms by priority then age; in flood mode, non-P1 grouped."""
    shown = [v for v in views if v["state"] in _STATE_ORDER]
    shown.sort(
        key=lambda v: (_ORDER[v["priority"]], _STATE_ORDER[v["state"]], v["raised_at"] or "")
    )
    hidden = [v for v in views if v["state"] in ("shelved", "suppressed", "out_of_service")]
    result: dict[str, Any] = {"flood": flood, "alarms": shown, "hidden": hidden, "groups": []}
    if flood:
        result["alarms"] = [v for v in shown if v["priority"] == "P1"]
        groups: dict[str, list[dict[str, Any]]] = {}
        for view in shown:
            if view["priority"] != "P1":
                groups.setdefault(view["group"] or view["alarm_id"], []).append(view)
        result["groups"] = [
            {
                "group": key,
                "priority": members[0]["priority"],
                "count": len(members),
                "first_out": next((m for m in members if m["first_out"]), members[0]),
                "alarm_ids": [m["alarm_id"] for m in members],
            }
            for key, members in groups.items()
        ]
    return result


def create_alarm_router(alarms: AlarmService | None, zone: ZoneInfo) -> APIRouter:
    """Routes under /api/v1/alarms."""
    router = APIRouter(prefix="/api/v1", tags=["alarms"])

    def service() -> AlarmService:
        if alarms is None:
            raise HTTPException(404, "the alarm engine is not running on this gateway")
        return alarms

    async def with_tickets(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [v["occurrence"] for v in views if v["occurrence"] and v["incident"]]
        found = await service().journal.query(lambda conn: tickets(conn, ids))
        by_id = {t.incident_id: t for t in found}
        for view in views:
            ticket = by_id.get(view["occurrence"] or "")
            view["ticket_no"] = ticket.ticket_no if ticket else None
            view["ticket_state"] = ticket.state if ticket else None
        return views

    async def act(
        who: Principal,
        action: str,
        alarm_id: str,
        reason: str | None,
        change: Callable[[AlarmEngine, datetime], Any],
    ) -> dict[str, Any]:
        svc = service()
        try:
            alarm = await svc.command(change, audit=(who, action, alarm_id, reason))
        except KeyError:
            raise HTTPException(404, f"no alarm {alarm_id}") from None
        except AlarmRefused as exc:
            raise HTTPException(409, str(exc)) from None
        except JournalError as exc:
            raise HTTPException(503, f"not recorded, try again: {exc}") from None
        assert svc.engine is not None
        return svc.engine.view(alarm, svc.clock.now())

    @router.get("/alarms")
    async def list_alarms(
        _: Principal = Depends(require("alarms.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """The alarm board: what the guard must see now, P1 first."""
        svc = service()
        views = await with_tickets(svc.views())
        assert svc.engine is not None
        return board(views, svc.engine.flood)

    @router.get("/alarms/kpis")
    async def kpis(
        shift: Literal["current", "previous"] = "current",
        _: Principal = Depends(require("alarms.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """ISA-18.2 / EEMUA 191 figures for a shift."""
        svc = service()
        now = svc.clock.now()
        start, end = shift_window(now, svc.plan.plan.shifts, zone, shift)
        figures = await svc.journal.query(lambda conn: shift_kpis(conn, start, end, now))
        stale_s = float(svc.plan.plan.stale_after_h) * 3600
        figures["stale"] = (
            None
            if shift == "previous"
            else sum(  # a count of now
                1
                for v in svc.views()
                if v["active"]
                and v["raised_at"]
                and (now - parse_rfc3339(v["raised_at"])).total_seconds() > stale_s
            )
        )
        figures["flood_now"] = bool(svc.engine and svc.engine.flood)
        return figures

    @router.get("/alarms/per-hour")
    async def alarms_per_hour(
        _: Principal = Depends(require("alarms.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """Alarms raised per hour over the last 24 hours (the screen's chart)."""
        svc = service()
        now = svc.clock.now()
        return {"hours": await svc.journal.query(lambda conn: per_hour(conn, now))}

    @router.get("/alarms/stream")
    async def stream(
        _: Principal = Depends(require("alarms.read")),  # noqa: B008
    ) -> StreamingResponse:
        """Server-sent events: a snapshot, then every committed change."""
        svc = service()
        sub = svc.stream.subscribe()

        async def body() -> AsyncIterator[str]:
            try:
                yield _sse("snapshot", {"alarms": svc.views()})
                while True:
                    try:
                        async with asyncio.timeout(KEEPALIVE_S):
                            message = await sub.queue.get()
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield _sse(message.get("type", "alarm"), message)
                    if message.get("type") == "resync":
                        return
            finally:
                svc.stream.unsubscribe(sub)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.post("/alarms/planned-outages")
    async def plan_outage(
        body: OutageIn,
        who: Principal = Depends(require("outages.plan")),  # noqa: B008
    ) -> dict[str, Any]:
        """A supervisor enters a planned cut; matching outage alarms are suppressed in it."""
        if body.ends_at <= body.starts_at:
            raise HTTPException(422, "ends_at must be after starts_at")
        notice = {
            "notice_id": f"local-{uuid.uuid4().hex[:12]}",
            "utility": body.utility,
            "scope": body.scope,
            "starts_at": to_rfc3339(body.starts_at),
            "ends_at": to_rfc3339(body.ends_at),
            "reason": body.reason,
            "by": who.name,
        }
        svc = service()
        try:
            await svc.plan_outage(notice, who)
        except JournalError as exc:
            raise HTTPException(503, f"not recorded, try again: {exc}") from None
        return notice

    @router.get("/alarms/{alarm_id:path}")
    async def one_alarm(
        alarm_id: str,
        _: Principal = Depends(require("alarms.read")),  # noqa: B008
    ) -> dict[str, Any]:
        views = [v for v in service().views() if v["alarm_id"] == alarm_id]
        if not views:
            raise HTTPException(404, f"no alarm {alarm_id}")
        return (await with_tickets(views))[0]

    @router.post("/alarms/{alarm_id:path}/acknowledge")
    async def acknowledge(
        alarm_id: str,
        body: NoteIn,
        who: Principal = Depends(require("alarms.acknowledge")),  # noqa: B008
    ) -> dict[str, Any]:
        return await act(
            who,
            "alarm.acknowledge",
            alarm_id,
            body.note,
            lambda e, now: e.acknowledge(alarm_id, who.name, now, body.note),
        )

    @router.post("/alarms/{alarm_id:path}/notes")
    async def note(
        alarm_id: str,
        body: TextIn,
        who: Principal = Depends(require("alarms.acknowledge")),  # noqa: B008
    ) -> dict[str, Any]:
        return await act(
            who,
            "alarm.note",
            alarm_id,
            None,
            lambda e, now: e.add_note(alarm_id, who.name, body.text, now),
        )

    @router.post("/alarms/{alarm_id:path}/steps/{number}")
    async def step(
        alarm_id: str,
        number: int,
        who: Principal = Depends(require("alarms.acknowledge")),  # noqa: B008
    ) -> dict[str, Any]:
        """Tick step ``number`` (1-based) of the plan for this occurrence."""
        return await act(
            who,
            "alarm.step",
            alarm_id,
            f"step {number}",
            lambda e, now: e.tick_step(alarm_id, number - 1, who.name, now),
        )

    @router.post("/alarms/{alarm_id:path}/on-scene")
    async def on_scene(
        alarm_id: str,
        who: Principal = Depends(require("alarms.acknowledge")),  # noqa: B008
    ) -> dict[str, Any]:
        """Someone is at the place (the plan's on-scene commitment)."""
        return await act(
            who,
            "alarm.on_scene",
            alarm_id,
            None,
            lambda e, now: e.on_scene(alarm_id, who.name, now),
        )

    @router.post("/alarms/{alarm_id:path}/assign")
    async def assign(
        alarm_id: str,
        body: AssignIn,
        who: Principal = Depends(require("alarms.acknowledge")),  # noqa: B008
    ) -> dict[str, Any]:
        """Name who handles the occurrence and who supervises it (the closed loop)."""
        if body.handler is None and body.supervisor is None:
            raise HTTPException(422, "name a handler, a supervisor or both")
        return await act(
            who,
            "alarm.assign",
            alarm_id,
            None,
            lambda e, now: e.assign(
                alarm_id, who.name, now, handler=body.handler, supervisor=body.supervisor
            ),
        )

    @router.post("/alarms/{alarm_id:path}/shelve")
    async def shelve(
        alarm_id: str,
        body: ShelveIn,
        who: Principal = Depends(require("alarms.shelve")),  # noqa: B008
    ) -> dict[str, Any]:
        return await act(
            who,
            "alarm.shelve",
            alarm_id,
            body.reason,
            lambda e, now: e.shelve(alarm_id, who.name, body.reason, body.duration_s, now),
        )

    @router.post("/alarms/{alarm_id:path}/unshelve")
    async def unshelve(
        alarm_id: str,
        who: Principal = Depends(require("alarms.shelve")),  # noqa: B008
    ) -> dict[str, Any]:
        return await act(
            who,
            "alarm.unshelve",
            alarm_id,
            None,
            lambda e, now: e.unshelve(alarm_id, who.name, now),
        )

    @router.post("/alarms/{alarm_id:path}/out-of-service")
    async def out_of_service(
        alarm_id: str,
        body: ReasonIn,
        who: Principal = Depends(require("alarms.service")),  # noqa: B008
    ) -> dict[str, Any]:
        return await act(
            who,
            "alarm.out_of_service",
            alarm_id,
            body.reason,
            lambda e, now: e.remove_from_service(alarm_id, who.name, body.reason, now),
        )

    @router.post("/alarms/{alarm_id:path}/return-to-service")
    async def return_to_service(
        alarm_id: str,
        who: Principal = Depends(require("alarms.service")),  # noqa: B008
    ) -> dict[str, Any]:
        return await act(
            who,
            "alarm.return_to_service",
            alarm_id,
            None,
            lambda e, now: e.return_to_service(alarm_id, who.name, now),
        )

    return router


def _sse(event: str, data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n"
