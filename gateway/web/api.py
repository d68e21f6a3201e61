"""The HTTP API: health, metrics, events (read and intake), audit trail.

Every endpoint but ``/healthz`` needs a bearer token (gateway.auth). The
intake answers only after the events are committed, so a 200 means durable.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway import __version__
from gateway.audit import recent_audit, record_audit
from gateway.auth import Principal, TokenRegistry
from gateway.errors import JournalClosed, JournalWriteError
from gateway.events import Event, check_event_id, check_kind, new_event_id
from gateway.journal.queries import EventFilter, query_events
from gateway.journal.store import Journal
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.supervisor import PartHealth, PartState
from gateway.web.masking import masked, sees_in_full
from gateway.web.params import Seq, UtcDatetime
from gateway.web.security import require
from gateway.web.sessions import SessionStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_BATCH = 1000


@dataclass
class ApiContext:
    """What the API needs from the running service (no adapter objects)."""

    site_id: str
    journal: Journal
    tokens: TokenRegistry
    metrics: GatewayMetrics
    parts: Callable[[], dict[str, PartHealth]]
    sessions: SessionStore | None = None


class EventIn(BaseModel):
    """One event handed in over HTTP; ``id`` makes a retry safe (stored once)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    kind: Annotated[str, Field(min_length=3, max_length=100)]
    device: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    device_time: AwareDatetime | None = None
    """Kept with the device's own offset: it is the device's clock, as it said it."""
    payload: dict[str, Any] = {}


class EventBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]


class SubmitResult(BaseModel):
    stored: int
    ids: list[str]


def _overall(parts: dict[str, PartHealth]) -> str:
    states = {p.state for p in parts.values()}
    if states & {PartState.FAILED, PartState.RESTARTING}:
        return "degraded"
    return "ok"


def create_api(ctx: ApiContext, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """Build the FastAPI application for a running service (plus the parts' routers)."""
    app = FastAPI(
        title="Site Gateway API",
        version=__version__,
        description="On-site edge gateway: events, health, metrics. Bearer token per user.",
    )
    app.state.tokens = ctx.tokens
    app.state.sessions = ctx.sessions

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(
                {"detail": f"body larger than {MAX_BODY_BYTES} bytes"},
                status_code=413,
            )
        response: Response = await call_next(request)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with pydantic's reasons, but never a crash on what the client sent
        (a NaN in a body cannot be echoed back as JSON)."""
        return JSONResponse({"detail": [_plain_error(e) for e in exc.errors()]}, status_code=422)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Liveness and part health; no token needed (for systemd, load balancers)."""
        parts = ctx.parts()
        failing = ctx.journal.last_commit_error
        return {
            "status": "degraded" if failing else _overall(parts),
            "site": ctx.site_id,
            "intake": "open" if ctx.journal.accepting else "closed",
            "journal": {"ok": failing is None, "error": failing},
            "parts": {name: p.state.value for name, p in parts.items()},
        }

    @app.get("/metrics", tags=["health"])
    async def metrics(_: Principal = Depends(require("health.detail"))) -> Response:  # noqa: B008
        """Prometheus text format."""
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/api/v1/events", tags=["events"])
    async def list_events(
        who: Principal = Depends(require("events.read")),  # noqa: B008
        kind: str | None = None,
        device: str | None = None,
        since: Annotated[UtcDatetime | None, Query(description="RFC 3339, inclusive")] = None,
        until: Annotated[UtcDatetime | None, Query(description="RFC 3339, exclusive")] = None,
        order: Literal["asc", "desc"] = "desc",
        cursor: Annotated[Seq | None, Query(description="'next' of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Recent events by kind, device and receive-time range, paged by cursor;
        card numbers and plates masked except for supervisors and admins."""
        flt = EventFilter(kind, device, since, until, order, cursor, limit)
        events = await ctx.journal.query(lambda conn: query_events(conn, flt))
        for event in events:
            event["payload"] = masked(event["payload"], who)
        next_cursor = events[-1]["seq"] if len(events) == limit else None
        return {"events": events, "next": next_cursor, "masked": not sees_in_full(who)}

    @app.post("/api/v1/events", tags=["events"], response_model=SubmitResult)
    async def submit_events(
        batch: EventBatchIn,
        who: Principal = Depends(require("events.submit")),  # noqa: B008
    ) -> SubmitResult:
        """Hand in events (manual entries, integrations); answers after commit."""
        try:
            events = [_to_event(item) for item in batch.events]
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            await ctx.journal.submit_many(events)
            await record_audit(
                ctx.journal,
                who,
                "events.submit",
                f"{len(events)} events",
                detail={"kinds": sorted({e.kind for e in events}), "first_id": events[0].id},
            )
        except ValueError as exc:  # e.g. NaN in a payload: not storable as JSON
            raise HTTPException(422, f"payload not storable: {exc}") from None
        except JournalClosed:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "gateway is shutting down; retry with the same ids",
                headers={"Retry-After": "5"},
            ) from None
        except JournalWriteError as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"{exc}; retry with the same ids",
                headers={"Retry-After": "5"},
            ) from None
        return SubmitResult(stored=len(events), ids=[e.id for e in events])

    @app.get("/api/v1/audit", tags=["audit"])
    async def list_audit(
        _: Principal = Depends(require("audit.read")),  # noqa: B008
        before: Annotated[Seq | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The audit trail, newest first."""
        rows = await ctx.journal.query(lambda conn: recent_audit(conn, limit=limit, before=before))
        return {"audit": rows, "next": rows[-1]["seq"] if len(rows) == limit else None}

    for router in routers:
        app.include_router(router)
    return app


def _plain_error(error: Mapping[str, Any]) -> dict[str, Any]:
    plain = {"type": error.get("type"), "loc": list(error.get("loc", ())), "msg": error.get("msg")}
    value = error.get("input")
    if (
        value is None
        or isinstance(value, str | bool | int)
        or (isinstance(value, float) and math.isfinite(value))
    ):
        plain["input"] = value
    return plain


def _to_event(item: EventIn) -> Event:
    """The event an item stands for; ValueError if its payload holds NaN or an
    infinity (the journal's encoder would write those as null)."""
    try:
        json.dumps(item.payload, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"payload not storable: {exc}") from None
    return Event(
        kind=check_kind(item.kind),
        device=item.device,
        payload=item.payload,
        device_time=item.device_time,
        id=check_event_id(item.id) if item.id is not None else new_event_id(),
    )
