"""API for gates and barriers: remote commands by a supervisor, with a reason.

Each command is audited and journalled (``access.command``) whether the
device confirmed it or not, so a failed "raise the barrier" is as visible to
the guard as a successful one; the answer is 502 with the reason when the
device did not confirm within its profile's timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from gateway.audit import insert_audit
from gateway.auth import Principal
from gateway.commands import CommandFailed, DeviceCommands
from gateway.config import ParkingLot
from gateway.events import Event
from gateway.journal.store import Journal, insert_events
from gateway.parking import occupancy, recount
from gateway.web.security import require


class RecountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counts: dict[
        Literal["temporary", "monthly", "vip", "stored_value", "unknown"],
        Annotated[int, Field(ge=0, le=100_000)],
    ]
    reason: str = Field(min_length=2, max_length=500)


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["open_door", "raise_barrier", "hold_open", "release"]
    reason: str = Field(min_length=2, max_length=500)
    door: int = Field(default=1, ge=1, le=64)
    duration_s: int = Field(default=0, ge=0, le=86_400)


def create_access_router(
    journal: Journal, commands: DeviceCommands | None, lots: Sequence[ParkingLot]
) -> APIRouter:
    """Routes under /api/v1 for gates, barriers and car parks."""
    router = APIRouter(prefix="/api/v1", tags=["access"])
    lot_ids = {lot.id for lot in lots}

    @router.get("/parking")
    async def parking(_: Principal = Depends(require("devices.read"))) -> dict[str, Any]:  # noqa: B008
        """Each lot: cars by class, spaces, free, full (per class)."""
        return {"lots": await journal.query(lambda conn: occupancy(conn, lots))}

    @router.post("/parking/{lot}/recount")
    async def parking_recount(
        lot: str,
        body: RecountIn,
        who: Principal = Depends(require("parking.recount")),  # noqa: B008
    ) -> dict[str, Any]:
        """A guard's count of a lot replaces the drifted one; audited."""
        if lot not in lot_ids:
            raise HTTPException(404, f"{lot} is not a lot of this site")
        counts: dict[str, int] = {str(k): v for k, v in body.counts.items()}

        def op(conn: Any) -> dict[str, int]:
            before = recount(conn, lot, counts)
            insert_events(
                conn,
                [
                    Event(
                        "parking.recount", lot, {"counts": counts, "before": before, "by": who.name}
                    )
                ],
            )
            insert_audit(
                conn,
                who,
                "parking.recount",
                lot,
                reason=body.reason,
                detail={"counts": counts, "before": before},
            )
            return before

        before = await journal.write(op)
        return {"lot": lot, "counts": counts, "before": before}

    @router.post("/access/{device}/commands")
    async def send_command(
        device: str,
        body: CommandIn,
        who: Principal = Depends(require("access.command")),  # noqa: B008
    ) -> dict[str, Any]:
        """Open a door / raise a barrier / hold open / release; answers after the device."""
        if commands is None or not commands.supports(device, body.action):
            raise HTTPException(404, f"{device} does not take {body.action!r}")
        error = None
        request_id = None
        try:
            request_id = await commands.command(
                device, body.action, door=body.door, duration_s=body.duration_s
            )
        except CommandFailed as exc:
            error = str(exc)
        detail = {"action": body.action, "door": body.door, "request_id": request_id}
        record = {**detail, "by": who.name, "reason": body.reason, "done": error is None}
        if error is not None:
            record["error"] = error

        def op(conn: Any) -> None:
            insert_events(conn, [Event("access.command", device, record)])
            insert_audit(
                conn,
                who,
                f"access.{body.action}",
                device,
                reason=body.reason,
                detail={**detail, "done": error is None, "error": error},
            )

        await journal.write(op)
        if error is not None:
            raise HTTPException(502, error)
        return {"done": True, "device": device, "action": body.action, "request_id": request_id}

    return router
