"""API for the guard tour: scans from the phone page, the panic button, status, QR URLs.

Each checkpoint's QR tag holds a URL on this gateway signed with the patrol
``signing_secret``: the phone's own camera opens it, the page posts the scan.
A forged or edited URL is refused *and recorded* (a flagged ``patrol.flag``);
a scan is idempotent on the id the page gave it, so a queue that was sent
twice after coming back online stores each scan once. The phone's clock is
kept next to the gateway's: the skew at sending goes with the scan.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.alarms.kpis import shift_window
from gateway.auth import Principal
from gateway.clock import Clock, to_rfc3339
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.patrol.model import PatrolSettings
from gateway.patrol.tracker import PatrolTracker, last_scans, round_report
from gateway.web.csvfile import excel_csv
from gateway.web.params import UtcDatetime
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
    scanned_at: UtcDatetime
    sent_at: UtcDatetime
    """The phone's clock when it sent this (after an offline queue: later than scanned_at)."""


REPORT_CATEGORIES = ("repair", "security", "fire_hazard", "cleanliness", "other")
MAX_PHOTO_BYTES = 2 * 1024 * 1024
_PHOTO_TYPES = {b"\xff\xd8\xff": "jpg", b"\x89PNG": "png", b"RIFF": "webp"}


class ReportIn(BaseModel):
    """A guard reports a problem found on the round (报事), optionally with a photo."""

    model_config = ConfigDict(extra="forbid")
    report_id: ScanId
    category: Literal["repair", "security", "fire_hazard", "cleanliness", "other"]
    note: str = Field(min_length=2, max_length=1000)
    checkpoint: str | None = Field(default=None, max_length=64)
    photo: str | None = Field(default=None, max_length=3 * 1024 * 1024)
    """A data URL (``data:image/jpeg;base64,…``) of at most 2 MiB of image."""
    reported_at: UtcDatetime
    sent_at: UtcDatetime


class PanicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    panic_id: ScanId
    silent: bool = False
    pressed_at: UtcDatetime
    sent_at: UtcDatetime


def create_patrol_router(
    settings: PatrolSettings,
    tracker: PatrolTracker | None,
    journal: Journal,
    clock: Clock,
    shifts: Sequence[str],
) -> APIRouter:
    router = APIRouter(prefix="/api/v1/patrol", tags=["patrol"])
    photos = journal.path.parent / "photos"
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
        await _from_phone(
            journal, clock, who, "patrol.scan", payload, f"patrol-scan:{body.scan_id}",
            body.scanned_at,
        )  # fmt: skip
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
        await _from_phone(
            journal, clock, who, "patrol.panic", payload, f"patrol-panic:{body.panic_id}",
            body.pressed_at,
        )  # fmt: skip
        return {"stored": True, "last_checkpoint": last}

    @router.post("/reports")
    async def report_problem(
        body: ReportIn,
        who: Principal = Depends(require("patrol.scan")),  # noqa: B008
    ) -> dict[str, Any]:
        """A problem found on the round: an alarm for the guard room and a ticket at central."""
        photo = None
        if body.photo:
            photo = _save_photo(photos, body.report_id, body.photo)
        cp = settings.checkpoint(body.checkpoint or "")
        payload = {
            "report_id": body.report_id,
            "guard": who.name,
            "category": body.category,
            "note": body.note,
            "checkpoint": cp.id if cp else None,
            "where": f"{cp.name if cp else '巡更途中 on the round'} · {body.note[:40]}",
            "photo": photo,
            "reported_at": to_rfc3339(body.reported_at),
            "clock_skew_s": skew(body.sent_at),
        }
        await _from_phone(
            journal, clock, who, "patrol.report", payload, f"patrol-report:{body.report_id}",
            body.reported_at,
        )  # fmt: skip
        return {"stored": True, "report_id": body.report_id, "photo": photo}

    @router.get("/photos/{name}")
    async def photo(
        name: str,
        _: Principal = Depends(require("devices.read")),  # noqa: B008
    ) -> FileResponse:
        """A report's photo (names are made by the gateway: id.ext)."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}\.(jpg|png|webp)", name):
            raise HTTPException(404, "no such photo")
        path = photos / name
        if not path.is_file():
            raise HTTPException(404, "no such photo")
        return FileResponse(path)

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


def _save_photo(folder: Path, report_id: str, data_url: str) -> str:
    """Decode, check and store a photo beside the journal; its file name.

    The name comes from the report's id, so a report sent twice writes the same
    file; the write is atomic (temporary file, then rename)."""
    head, _, encoded = data_url.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        raise HTTPException(422, "photo: expected a data URL of an image (data:image/…;base64,…)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise HTTPException(422, "photo: not valid base64") from None
    if len(raw) > MAX_PHOTO_BYTES:
        raise HTTPException(413, f"photo: larger than {MAX_PHOTO_BYTES // 1024} KiB")
    ext = next((e for magic, e in _PHOTO_TYPES.items() if raw.startswith(magic)), None)
    if ext is None:
        raise HTTPException(422, "photo: not a JPEG, PNG or WebP image")
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{report_id}.{ext}"
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(raw)
    os.replace(tmp, folder / name)
    return name


def _csv(rounds: list[dict[str, Any]]) -> bytes:
    """One row per round, for the site office's spreadsheet."""
    return excel_csv(
        ["轮次 round", "路线 route", "开始 start", "完成率 completion %", "漏巡 missed",
         "迟到 late", "过早 early", "乱序 out of order", "保安 guards"],
        [
            [r["round"], r["route_name"], r["start"], r["completion_pct"], " ".join(r["missed"]),
             " ".join(r["late"]), " ".join(r["early"]), "是 yes" if r["out_of_order"] else "",
             " ".join(r["guards"])]
            for r in rounds
        ],
    )  # fmt: skip


async def _from_phone(
    journal: Journal,
    clock: Clock,
    who: Principal,
    kind: str,
    payload: dict[str, Any],
    event_id: str,
    device_time: datetime | None,
) -> None:
    """Journal what a guard's phone sent; the id the page chose makes a resend harmless."""
    await journal.submit(
        Event(
            kind,
            f"phone:{who.name}",
            payload,
            device_time=device_time,
            received_at=clock.now(),
            id=event_id,
        )
    )


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
    await _from_phone(
        journal, clock, who, "patrol.flag", payload, f"patrol-flag:{body.scan_id}:forged_qr", None
    )
