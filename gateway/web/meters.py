"""API for meters, devices, billing exports and supervisor entries.

Reads go through the journal's read pool and the meter book; supervisor
actions (manual readings, meter replacements, switching outputs) need a
reason and are written to the audit trail.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.audit import record_audit
from gateway.auth import Principal
from gateway.clock import utc_now
from gateway.commands import CommandFailed, OutputCommands
from gateway.config import SiteConfig
from gateway.events import Event
from gateway.health import DeviceHealth
from gateway.journal.queries import EventFilter, query_events
from gateway.journal.store import Journal
from gateway.meters.book import MeterBook, UnknownMeter
from gateway.meters.vee import InvalidReading
from gateway.web.params import Seq, UtcDatetime
from gateway.web.security import require

PERIOD = r"^\d{4}-(0[1-9]|1[0-2])$"


class ManualReadingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    register_: str = Field(alias="register", min_length=1)
    value: float = Field(allow_inf_nan=False)
    read_at: UtcDatetime | None = None
    reason: str = Field(min_length=2, max_length=500)
    photo_ref: str | None = Field(default=None, max_length=500)


class ReplacementIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    register_: str = Field(alias="register", min_length=1)
    old_final: float = Field(allow_inf_nan=False)
    new_initial: float = Field(allow_inf_nan=False)
    at: UtcDatetime | None = None
    reason: str = Field(min_length=2, max_length=500)


class OutputIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool
    reason: str = Field(min_length=2, max_length=500)


def create_meter_router(
    config: SiteConfig,
    journal: Journal,
    book: MeterBook | None,
    devices: Callable[[], list[DeviceHealth]],
    outputs: OutputCommands | None,
) -> APIRouter:
    """Routes under /api/v1 for meters, devices, billing and outputs."""
    router = APIRouter(prefix="/api/v1")
    meters_cfg = {m.id: m for m in config.devices.meters}

    def the_book() -> MeterBook:
        if book is None:
            raise HTTPException(404, "no meters are configured on this site")
        return book

    @router.get("/devices", tags=["devices"])
    async def list_devices(_: Principal = Depends(require("devices.read"))) -> dict[str, Any]:  # noqa: B008
        """Every polled device with its state and failure counters by kind."""
        return {"devices": [d.snapshot() for d in devices()]}

    @router.get("/meters", tags=["meters"])
    async def list_meters(_: Principal = Depends(require("meters.read"))) -> dict[str, Any]:  # noqa: B008
        """Each meter: where it is, its health and its latest values (this run)."""
        health = {d.device: d.state.value for d in devices()}
        b = the_book()
        return {
            "meters": [
                {
                    "id": m.id,
                    "utility": m.utility,
                    "role": m.role,
                    "building": m.building,
                    "home": m.home,
                    "state": health.get(m.id, "unknown"),
                    "latest": b.latest(m.id),
                }
                for m in config.devices.meters
            ]
        }

    @router.get("/meters/{meter}/readings", tags=["meters"])
    async def meter_readings(
        meter: str,
        _: Principal = Depends(require("meters.read")),  # noqa: B008
        since: UtcDatetime | None = None,
        until: UtcDatetime | None = None,
        cursor: Annotated[Seq | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """A meter's readings (newest first) over a receive-time range."""
        if meter not in meters_cfg:
            raise HTTPException(404, f"meter {meter!r} is not configured")
        flt = EventFilter("meter.reading", meter, since, until, "desc", cursor, limit)
        events = await journal.query(lambda conn: query_events(conn, flt))
        return {"readings": events, "next": events[-1]["seq"] if len(events) == limit else None}

    @router.get("/billing/owed", tags=["billing"])
    async def owed(_: Principal = Depends(require("meters.read"))) -> dict[str, Any]:  # noqa: B008
        """Meters whose period-close reading is still owed, by period."""
        return {"owed": the_book().owed()}

    @router.get("/billing/{period}/period-close.csv", tags=["billing"])
    async def period_close_csv(
        period: Annotated[str, PathParam(pattern=PERIOD)],
        _: Principal = Depends(require("billing.export")),  # noqa: B008
    ) -> Response:
        """Period-close readings of a month, UTF-8 with BOM (Excel shows the Chinese headers)."""
        rows = await journal.query(lambda conn: _period_rows(conn, period))
        return Response(
            _csv(rows, meters_cfg),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="period-close-{period}.csv"'},
        )

    async def audited_entry(
        entry: Awaitable[Event],
        who: Principal,
        action: str,
        meter: str,
        reason: str,
        detail: dict[str, Any],
    ) -> Event:
        """A supervisor's entry in the meter book: 422 if refused, audited if taken."""
        try:
            event = await entry
        except (UnknownMeter, InvalidReading) as exc:
            raise HTTPException(422, str(exc).strip("'\"")) from None
        await record_audit(
            journal, who, action, meter, reason=reason, detail={**detail, "event_id": event.id}
        )
        return event

    @router.post("/meters/{meter}/manual-readings", tags=["meters"])
    async def manual_reading(
        meter: str,
        body: ManualReadingIn,
        who: Principal = Depends(require("readings.edit")),  # noqa: B008
    ) -> dict[str, Any]:
        """A supervisor's reading of a broken meter; audited, ``source: manual``."""
        entry = the_book().enter_manual(
            meter,
            body.register_,
            body.value,
            body.read_at or utc_now(),
            entered_by=who.name,
            reason=body.reason,
            photo_ref=body.photo_ref,
        )
        detail = {"register": body.register_, "value": body.value, "photo_ref": body.photo_ref}
        event = await audited_entry(entry, who, "meter.manual_reading", meter, body.reason, detail)
        return {"event_id": event.id, "reading": event.payload["readings"][0]}

    @router.post("/meters/{meter}/replacements", tags=["meters"])
    async def replacement(
        meter: str,
        body: ReplacementIn,
        who: Principal = Depends(require("readings.edit")),  # noqa: B008
    ) -> dict[str, Any]:
        """A meter swapped for a new one; its next reading starts from ``new_initial``."""
        entry = the_book().enter_replacement(
            meter,
            body.register_,
            body.old_final,
            body.new_initial,
            body.at or utc_now(),
            entered_by=who.name,
            reason=body.reason,
        )
        detail = {
            "register": body.register_,
            "old_final": body.old_final,
            "new_initial": body.new_initial,
        }
        event = await audited_entry(entry, who, "meter.replacement", meter, body.reason, detail)
        return {"event_id": event.id}

    @router.post("/io/{device}/outputs/{output}", tags=["devices"])
    async def switch_output(
        device: str,
        output: int,
        body: OutputIn,
        who: Principal = Depends(require("outputs.switch")),  # noqa: B008
    ) -> dict[str, Any]:
        """Switch a relay output; answers once the module confirmed (502 if it did not)."""
        if outputs is None or not outputs.has_output(device, output):
            raise HTTPException(404, f"{device} has no output {output}")
        try:
            await outputs.set_output(device, output, body.on)
            result = "done"
        except CommandFailed as exc:
            result = f"failed: {exc}"
        await record_audit(
            journal,
            who,
            "io.output",
            f"{device}/{output}",
            reason=body.reason,
            detail={"on": body.on, "result": result},
        )
        if result != "done":
            raise HTTPException(502, result)
        return {"device": device, "output": output, "on": body.on, "result": result}

    return router


def _period_rows(conn: sqlite3.Connection, period: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT p.meter, p.status, e.payload FROM period_close p "
        "LEFT JOIN events e ON e.id = p.event_id WHERE p.period = ? ORDER BY p.meter",
        (period,),
    ).fetchall()
    return [dict(row) for row in rows]


def _csv(rows: list[dict[str, Any]], meters: dict[str, Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "表号 meter_id",
            "户号 home",
            "楼栋 building",
            "类别 utility",
            "寄存器 register",
            "读数 value",
            "单位 unit",
            "抄表时间 read_at",
            "质量 quality",
            "标记 flags",
            "来源 source",
            "状态 status",
            "reading_id",
        ]
    )
    for row in rows:
        meter = meters.get(row["meter"])
        home = getattr(meter, "home", None) or ""
        building = getattr(meter, "building", None) or ""
        utility = getattr(meter, "utility", "")
        if row["payload"] is None:
            writer.writerow(
                [
                    row["meter"],
                    home,
                    building,
                    utility,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    row["status"],
                    "",
                ]
            )
            continue
        payload = json.loads(row["payload"])
        for reading in payload["readings"]:
            writer.writerow(
                [
                    row["meter"],
                    home,
                    building,
                    utility,
                    reading["register"],
                    reading["value"],
                    reading["unit"],
                    payload["read_at"],
                    reading["quality"],
                    " ".join(reading["flags"]),
                    payload["source"],
                    row["status"],
                    reading["reading_id"],
                ]
            )
    return "\ufeff".encode() + out.getvalue().encode("utf-8")
