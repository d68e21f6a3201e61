"""What the guard-room screen shows besides alarms, in one request each.

``/api/v1/screen/status`` gathers devices by kind and state, car parks,
meters (offline, buildings in outage, planned cuts, period closes owed) and
sync, so the screen refreshes with one call. ``/api/v1/access/feed`` is the
live list of gate and barrier events, with card numbers and plates masked
for guards (a resident's movements are personal data; ../shared/DOMAIN.md,
records and confidentiality) and shown in full to supervisors.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query

from gateway.adapters.mqtt.profile import EVENT_KINDS
from gateway.alarms.service import AlarmService
from gateway.auth import Principal
from gateway.clock import to_rfc3339, utc_now
from gateway.config import ParkingLot
from gateway.health import DeviceHealth
from gateway.journal.store import Journal
from gateway.meters.usage import hourly_use
from gateway.parking import cars_by_hour, occupancy
from gateway.patrol.tracker import PatrolTracker
from gateway.sync.central_state import outage_notices
from gateway.sync.side import SyncSide
from gateway.web.masking import masked, sees_in_full
from gateway.web.security import require

FEED_KINDS = tuple(
    k for k in EVENT_KINDS if k.startswith(("access.", "door.", "vehicle.", "barrier."))
)


def _feed(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    # One indexed (kind, seq) read per kind, merged: a scan by seq would wade
    # through every meter reading in between.
    rows = []
    for kind in FEED_KINDS:
        rows += conn.execute(
            "SELECT seq, kind, device, received_at, payload FROM events "
            "WHERE kind = ? ORDER BY seq DESC LIMIT ?",
            (kind, limit),
        ).fetchall()
    rows.sort(key=lambda row: -int(row[0]))
    return [
        {"seq": seq, "kind": kind, "device": device, "at": at, "payload": json.loads(payload)}
        for seq, kind, device, at, payload in rows[:limit]
    ]


def _meter_figures(conn: sqlite3.Connection, now: str) -> dict[str, Any]:
    owed = conn.execute("SELECT count(*) FROM period_close WHERE status = 'owed'").fetchone()[0]
    notices = [n.__dict__ for n in outage_notices(conn, ending_after=now)]
    return {"closes_owed": int(owed), "planned_outages": notices}


class SiteStatus:
    """Everything but alarms that the screen and the shift handover show."""

    def __init__(
        self,
        journal: Journal,
        devices: Callable[[], list[DeviceHealth]],
        lots: Sequence[ParkingLot],
        sync: SyncSide | None,
        alarms: AlarmService | None,
        kinds: dict[str, str],
        *,
        zone: ZoneInfo,
        mains: dict[str, list[str]],
        patrol: PatrolTracker | None = None,
    ) -> None:
        self.patrol = patrol
        self.zone = zone
        self.mains = mains  # building → its main electricity meters (consumption chart)
        self.journal = journal
        self.devices = devices
        self.lots = lots
        self.sync = sync
        self.alarms = alarms
        self.kinds = kinds

    async def snapshot(self) -> dict[str, Any]:
        """Devices by kind and state, car parks, meters and sync, as of now."""
        by_kind: dict[str, Counter[str]] = {}
        down = []
        for health in self.devices():
            kind = self.kinds.get(health.device, health.kind)
            by_kind.setdefault(kind, Counter())[health.state.value] += 1
            if health.state.value in ("offline", "degraded"):
                down.append({"device": health.device, "kind": kind, "state": health.state.value})
        now = to_rfc3339(utc_now())
        meters = await self.journal.query(lambda conn: _meter_figures(conn, now))
        meter_health = by_kind.get("meter", Counter())
        outages = sorted(
            {
                v["building"] or v["location"]
                for v in (self.alarms.views() if self.alarms else [])
                if v["type"] == "power_outage" and v["active"]
            }
        )
        lots = self.lots
        parking = await self.journal.query(lambda conn: occupancy(conn, lots))
        sync_status = await self.sync.status() if self.sync is not None else None
        return {
            "at": now,
            "devices": {k: dict(v) for k, v in sorted(by_kind.items())},
            "down": down[:50],
            "parking": parking,
            "meters": {
                "total": sum(meter_health.values()),
                "offline": meter_health.get("offline", 0),
                "buildings_in_outage": outages,
                **meters,
            },
            "sync": None if sync_status is None else _sync_summary(sync_status),
            "patrol": self.patrol.status() if self.patrol is not None else None,
        }

    async def charts(self, building: str | None) -> dict[str, Any]:
        """Cars parked per hour today; a building's power use today vs yesterday."""
        now = utc_now().astimezone(self.zone)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        hours_so_far = now.hour + 1
        lots = self.lots
        parking = await self.journal.query(
            lambda conn: cars_by_hour(conn, lots, midnight, hours_so_far)
        )
        buildings = sorted(self.mains)
        chosen = building if building in self.mains else (buildings[0] if buildings else None)
        meters = self.mains.get(chosen or "", [])
        yesterday = midnight - timedelta(days=1)
        today_use = await self.journal.query(
            lambda conn: hourly_use(conn, meters, "import_kwh", midnight, hours_so_far)
        )
        before = await self.journal.query(
            lambda conn: hourly_use(conn, meters, "import_kwh", yesterday, 24)
        )
        return {
            "parking": parking,
            "consumption": {
                "building": chosen,
                "buildings": buildings,
                "today": today_use,
                "yesterday": before,
            },
        }


def _sync_summary(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": status["state"],
        "dead_letters": status["dead_letters"],
        "backlog_used_pct": status["backlog_used_pct"],
        "streams": {
            name: {
                "backlog": s["backlog"],
                "last_success": s["last_success"],
                "last_error": s["last_error"],
            }
            for name, s in status["streams"].items()
        },
    }


def create_screen_router(site: SiteStatus) -> APIRouter:
    """Routes for the guard-room screen."""
    router = APIRouter(prefix="/api/v1", tags=["screen"])
    journal = site.journal

    @router.get("/screen/status")
    async def status(_: Principal = Depends(require("devices.read"))) -> dict[str, Any]:  # noqa: B008
        """Devices, car parks, meters and sync, for the site-status panel."""
        return await site.snapshot()

    @router.get("/screen/charts")
    async def charts(
        _: Principal = Depends(require("devices.read")),  # noqa: B008
        building: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """Cars parked per hour today; a building's power use per hour, today vs yesterday."""
        return await site.charts(building)

    @router.get("/access/feed")
    async def feed(
        who: Principal = Depends(require("devices.read")),  # noqa: B008
        limit: Annotated[int, Query(ge=1, le=200)] = 30,
    ) -> dict[str, Any]:
        """The latest gate and barrier events, cards and plates masked for guards."""
        events = await journal.query(lambda conn: _feed(conn, limit))
        for event in events:
            event["payload"] = masked(event["payload"], who)
        return {"events": events, "masked": not sees_in_full(who)}

    return router
