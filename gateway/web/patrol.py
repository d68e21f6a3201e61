"""API for the guard tour: scans from the phone page, the panic button, status, QR URLs.

Each checkpoint's QR tag holds a URL on this gateway signed with the patrol
``signing_secret``: the phone's own camera opens it, the page posts the scan.
A forged or edited URL is refused *and recorded* (a flagged ``patrol.flag``);
a scan is idempotent on the id the page gave it, so a queue that was sent
twice after coming back online stores each scan once. The phone's clock is
kept next to the gateway's: the skew at sending goes with the scan.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.alarms.kpis import shift_window
from gateway.auth import Principal
from gateway.clock import Clock, to_rfc3339
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.patrol.model import PatrolSettings
from gateway.patrol.tracker import PatrolTracker, last_scans, round_report
from gateway.web.security import require

ScanId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


def qr_signature(secret: str, checkpoint: str) -> str:
    """The signature in a checkpoint's QR URL (HMAC-SHA256, 96 bits shown)."""
    digest = hmac.new(secret.encode("utf-8"), checkpoint.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:24]


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scan_id: ScanId
    method: Literal["qr", "nfc", "code"]
    checkpoint: str | None = Field(default=None, max_length=64)
    sig: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=64)
    code: str | None = Field(default=None, max_length=16)
    scanned_at: AwareDatetime
    sent_at: AwareDatetime
    """The phone's clock when it sent this (after an offline queue: later than scanned_at)."""


class PanicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    panic_id: ScanId
    silent: bool = False
    pressed_at: AwareDatetime
    sent_at: AwareDatetime


def create_patrol_router(
    settings: PatrolSettings,
    tracker: PatrolTracker | None,
    journal: Journal,
    clock: Clock,
    shifts: Sequence[str],
) -> APIRouter:
    router = APIRouter(prefix="/api/v1/patrol", tags=["patrol"])
    secret = settings.signing_secret.get_secret_value() if settings.signing_secret else ""

    def skew(sent_at: datetime) -> float:
        return round((sent_at - clock.now()).total_seconds(), 1)

    @router.post("/scans")
    async def scan(
        body: ScanIn,
        who: Principal = Depends(require("patrol.scan")),  # noqa: B008
    ) -> dict[str, Any]:
        """A scan from the phone page: QR (signed URL), NFC tag or a typed code."""
        checkpoint: str | None
        if body.method == "qr":
            checkpoint = body.checkpoint or ""
            expected = qr_signature(secret, checkpoint)
            if not secret or not hmac.compare_digest(
                (body.sig or "").encode("utf-8"), expected.encode("utf-8")
            ):
                await _record_forgery(journal, body, who, clock)
                raise HTTPException(403, "this QR code is not one of this site's checkpoints")
            tag = checkpoint
        elif body.method == "code":
            tag = (body.code or "").upper()
            checkpoint = tracker.checkpoint_of(tag) if tracker else None
        else:
            tag = (body.tag or "").upper().replace(":", "")
            checkpoint = tracker.checkpoint_of(tag) if tracker else None
        payload = {
            "tag": tag,
            "checkpoint": checkpoint,
            "method": body.method,
            "guard": who.name,
            "scan_id": body.scan_id,
            "scanned_at": to_rfc3339(body.scanned_at),
            "clock_skew_s": skew(body.sent_at),
        }
        event = Event(
            "patrol.scan",
            f"phone:{who.name}",
            payload,
            device_time=body.scanned_at,
            received_at=clock.now(),
            id=f"patrol-scan:{body.scan_id}",
        )
        await journal.submit(event)
        cp = settings.checkpoint(checkpoint or "")
        return {
            "stored": True,
            "scan_id": body.scan_id,
            "checkpoint": checkpoint,
            "name": cp.name if cp else None,
            "name_en": cp.name_en if cp else None,
            "known": cp is not None,
        }

    @router.post("/panic")
    async def panic(
        body: PanicIn,
        who: Principal = Depends(require("patrol.scan")),  # noqa: B008
    ) -> dict[str, Any]:
        """The panic button: a P1 alarm with the guard's last checkpoint."""
        last = None
        for recent in await journal.query(last_scans):  # committed, not yet tracked
            if recent.get("guard") == who.name:
                tag = str(recent.get("tag") or "")
                last = recent.get("checkpoint") or (tracker.checkpoint_of(tag) if tracker else None)
                if last:
                    break
        cp = settings.checkpoint(last or "")
        payload = {
            "guard": who.name,
            "silent": body.silent,
            "last_checkpoint": last,
            "where": f"{who.display_name or who.name} · {cp.name if cp else '位置未知 unknown'}",
            "pressed_at": to_rfc3339(body.pressed_at),
            "clock_skew_s": skew(body.sent_at),
        }
        await journal.submit(
            Event(
                "patrol.panic",
                f"phone:{who.name}",
                payload,
                device_time=body.pressed_at,
                received_at=clock.now(),
                id=f"patrol-panic:{body.panic_id}",
            )
        )
        return {"stored": True, "last_checkpoint": last}

    @router.get("/status")
    async def status(_: Principal = Depends(require("devices.read"))) -> dict[str, Any]:  # noqa: B008
        """Rounds in progress (scanned / total, overdue checkpoints)."""
        if tracker is None:
            return {"enabled": False}
        return {"enabled": True, **tracker.status()}

    @router.get("/report")
    async def report(
        _: Principal = Depends(require("patrol.report")),  # noqa: B008
        shift: Literal["current", "previous"] = "previous",
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        """Rounds of a shift and what each guard did (for the handover); CSV for Excel."""
        if tracker is None:
            raise HTTPException(404, "the guard tour is not set up on this gateway")
        start, end = shift_window(clock.now(), shifts, tracker.zone, shift)
        data = round_report(settings, tracker.zone, tracker.scans, start, end)
        if format == "json":
            return JSONResponse(data)
        return Response(
            _csv(data["rounds"]),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="patrol-{start:%Y%m%d-%H%M}.csv"'
            },
        )

    @router.get("/checkpoints")
    async def checkpoints(
        _: Principal = Depends(require("patrol.manage")),  # noqa: B008
    ) -> dict[str, Any]:
        """Every checkpoint with the signed URL to print on its QR tag."""
        return {
            "checkpoints": [
                {
                    "id": c.id,
                    "name": c.name,
                    "name_en": c.name_en,
                    "location": c.location,
                    "code": c.code or c.id,
                    "qr_path": f"/p/{c.id}?s={qr_signature(secret, c.id)}" if secret else None,
                }
                for c in settings.checkpoints
            ]
        }

    return router


def _csv(rounds: list[dict[str, Any]]) -> bytes:
    """One row per round; UTF-8 with BOM so Excel shows the Chinese headers."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["轮次 round", "路线 route", "开始 start", "完成率 completion %", "漏巡 missed",
         "迟到 late", "过早 early", "乱序 out of order", "保安 guards"]
    )  # fmt: skip
    for r in rounds:
        writer.writerow(
            [
                r["round"],
                r["route_name"],
                r["start"],
                r["completion_pct"],
                " ".join(r["missed"]),
                " ".join(r["late"]),
                " ".join(r["early"]),
                "是 yes" if r["out_of_order"] else "",
                " ".join(r["guards"]),
            ]
        )
    return ("\ufeff" + out.getvalue()).encode("utf-8")


async def _record_forgery(journal: Journal, body: ScanIn, who: Principal, clock: Clock) -> None:
    """A forged QR scan is refused but never lost: it is a flagged finding."""
    payload = {
        "reason": "forged_qr",
        "alarm": True,
        "scan_id": body.scan_id,
        "tag": body.checkpoint,
        "checkpoint": None,
        "guard": who.name,
        "method": "qr",
        "where": f"伪造二维码 forged QR ({body.checkpoint})",
        "scanned_at": to_rfc3339(body.scanned_at),
    }
    await journal.submit(
        Event(
            "patrol.flag",
            f"phone:{who.name}",
            payload,
            received_at=clock.now(),
            id=f"patrol-flag:{body.scan_id}:forged_qr",
        )
    )
