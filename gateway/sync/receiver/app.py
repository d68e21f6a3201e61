"""The reference receiver's HTTP API: the central contract, plus a small control plane.

``/v1/sites/{site_id}/…`` implements ../shared/contracts/central-api.md with
its auth (bearer token, optional HMAC signature), limits (1,000 items, 1 MiB)
and idempotency, and goes through the faults of ``FaultPlan`` first.
``/_sim/…`` lets a test or a person change the faults and inject what the
central office does (ticket updates, outage notices); ``/`` is a read-only
page of what arrived.

The meter-readings path is the hot one (a benchmark drains a million readings
through it): raw body bytes, pydantic-core's JSON parser, one validation call
for the whole list, one SQL statement per batch, a ``json.dumps`` answer — no
response models, no per-item Python objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from pydantic_core import from_json

from gateway.sync.receiver.faults import DOWN_HEADER, RESET_HEADER, FaultPlan
from gateway.sync.receiver.models import (
    FAULTS,
    HEARTBEAT,
    INCIDENTS,
    MAX_BODY_BYTES,
    MAX_ITEMS,
    READINGS,
    body_error,
    check_ticket_update,
    complete_outage_notice,
    item_errors,
)
from gateway.sync.receiver.page import render_page
from gateway.sync.receiver.store import ReceiverStore

log = logging.getLogger(__name__)

SIGNATURE_MAX_AGE_S = 300
FEED_LIMIT = 500


@dataclass
class ReceiverContext:
    """What the app needs; the receiver's threads share it."""

    store: ReceiverStore
    plan: FaultPlan
    sites: Mapping[str, str]
    """site_id → bearer token."""
    signing_secrets: Mapping[str, str] = field(default_factory=dict)
    """site_id → HMAC secret; a site listed here must sign every request with a body."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the receiver stops, so that a slow (``delay_s``) answer ends at once."""


class _Refused(Exception):
    """An answer other than 200, raised from deep inside a handler."""

    def __init__(self, status: int, error: str, headers: Mapping[str, str] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _refusal(exc: _Refused) -> Response:
    return _json(exc.status, {"error": exc.error}, exc.headers)


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _Refused(401, "Authorization: Bearer <site token> is required", _UNAUTHORIZED)
    return token


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _site_of(ctx: ReceiverContext, token: str) -> str:
    """The site a token belongs to (401 if none): for the control plane."""
    for site_id, expected in ctx.sites.items():
        if _same(token, expected):
            return site_id
    raise _Refused(401, "the bearer token is not valid", _UNAUTHORIZED)


def _check_site_token(ctx: ReceiverContext, request: Request, site_id: str) -> None:
    """401 for a missing or unknown token, 403 for a token of another site."""
    token = _bearer(request)
    expected = ctx.sites.get(site_id)
    if expected is not None and _same(token, expected):
        return
    owner = _site_of(ctx, token)
    raise _Refused(403, f"the token is for site {owner}, not for site {site_id}")


def _check_signature(ctx: ReceiverContext, request: Request, site_id: str, body: bytes) -> None:
    secret = ctx.signing_secrets.get(site_id)
    if secret is None:
        return
    signature = request.headers.get("x-signature")
    stamp = request.headers.get("x-timestamp")
    if not signature or not stamp:
        raise _Refused(401, "X-Signature and X-Timestamp are required for this site")
    try:
        sent_at = float(stamp)
    except ValueError:
        raise _Refused(401, "X-Timestamp must be unix seconds") from None
    if not math.isfinite(sent_at) or abs(time.time() - sent_at) > SIGNATURE_MAX_AGE_S:
        raise _Refused(401, f"X-Timestamp is more than {SIGNATURE_MAX_AGE_S} s from our clock")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not _same(signature, expected):
        raise _Refused(401, "X-Signature does not match the body")


async def _read_body(request: Request) -> bytes:
    """The exact body bytes; 413 beyond 1 MiB, judged before anything is parsed.

    An oversized body is still read to its end (and dropped) so that the
    connection stays usable for the client's next request.
    """
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            too_big = True
        if not too_big:
            chunks.append(chunk)
    if too_big:
        raise _Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    return b"".join(chunks)


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        doc = from_json(body)  # pydantic-core's parser: a third faster than json.loads
    except ValueError as exc:
        raise _Refused(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Refused(400, "the body must be a JSON object")
    return doc


def _parse_batch(
    body: bytes, key: str, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[Any]]:
    """The document and its item list; 400 for a wrong shape, 413 for too many items."""
    doc = _parse_object(body)
    unknown = set(doc) - {key, *extra}
    if unknown:
        raise _Refused(400, f"unknown top-level field(s): {', '.join(sorted(unknown))}")
    items = doc.get(key)
    if not isinstance(items, list):
        raise _Refused(400, f"'{key}' must be a JSON array")
    if len(items) > MAX_ITEMS:
        raise _Refused(413, f"a batch holds at most {MAX_ITEMS} items, got {len(items)}")
    return doc, items


def _item_id(item: Any, key: str) -> str | None:
    value = item.get(key) if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def _cursor(request: Request) -> int:
    after = request.query_params.get("after") or "0"
    if not (after.isascii() and after.isdigit()) or len(after) > 18:
        raise _Refused(400, "'after' must be a cursor this feed returned in 'next'")
    return int(after)


Handler = Callable[[ReceiverContext, str, Request, bytes], tuple[Response, int]]


def _meter_readings(
    ctx: ReceiverContext, site_id: str, request: Request, body: bytes
) -> tuple[Response, int]:
    doc, items = _parse_batch(body, "readings", extra=("batch_id",))
    batch_id = doc.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        raise _Refused(400, "'batch_id' must be a non-empty string")
    errors = item_errors(READINGS, items)
    valid = [item for i, item in enumerate(items) if i not in errors] if errors else items
    new = iter(ctx.store.add_readings(site_id, batch_id, valid, len(errors)))
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        error = errors.get(index) if errors else None
        if error is None:
            status = "accepted" if next(new) else "duplicate"
            results.append({"reading_id": item["reading_id"], "status": status})
        else:
            results.append(
                {"reading_id": _item_id(item, "reading_id"), "status": "rejected", "error": error}
            )
    if errors:
        log.info("readings rejected site=%s batch=%s count=%d", site_id, batch_id, len(errors))
    return _json(200, {"results": results}), len(items)


def _incidents(
    ctx: ReceiverContext, site_id: str, request: Request, body: bytes
) -> tuple[Response, int]:
    _, items = _parse_batch(body, "incidents")
    errors = item_errors(INCIDENTS, items)
    valid = [item for i, item in enumerate(items) if i not in errors]
    outcomes = iter(ctx.store.add_incidents(site_id, valid, len(errors)))
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        incident_id = _item_id(item, "incident_id")
        if index in errors:
            result = {"status": "rejected", "ticket_no": None, "error": errors[index]}
        else:
            status, ticket_no = next(outcomes)
            result = {"status": status, "ticket_no": ticket_no, "error": None}
        results.append({"incident_id": incident_id, **result})
    return _json(200, {"results": results}), len(items)


def _ticket_updates(
    ctx: ReceiverContext, site_id: str, request: Request, body: bytes
) -> tuple[Response, int]:
    after = _cursor(request)
    updates, last = ctx.store.ticket_updates(site_id, after, FEED_LIMIT)
    return _json(200, {"updates": updates, "next": str(last)}), len(updates)


def _outage_notices(
    ctx: ReceiverContext, site_id: str, request: Request, body: bytes
) -> tuple[Response, int]:
    after = _cursor(request)
    notices, last = ctx.store.outage_notices(site_id, after, FEED_LIMIT)
    return _json(200, {"notices": notices, "next": str(last)}), len(notices)


def _heartbeat(
    ctx: ReceiverContext, site_id: str, request: Request, body: bytes
) -> tuple[Response, int]:
    doc = _parse_object(body)
    error = body_error(HEARTBEAT, doc)
    if error is not None:
        raise _Refused(400, error)
    ctx.store.record_heartbeat(site_id, doc)
    return Response(status_code=204), 0


async def _serve_api(
    ctx: ReceiverContext, request: Request, site_id: str, handler: Handler
) -> Response:
    """Faults first, then auth, limits and the handler; every request is logged."""
    started = time.perf_counter()
    faults = ctx.plan.faults
    applied: list[str] = []
    items = 0
    if faults.delay_s > 0:
        applied.append("delay")
        try:
            await asyncio.wait_for(ctx.stopping.wait(), faults.delay_s)
        except TimeoutError:
            pass
    refusal = None if faults.unauthorized else ctx.plan.draw_refusal()
    if faults.unauthorized:
        applied.append("unauthorized")
        response = _json(401, {"error": "the site token is not valid (simulated)"}, _UNAUTHORIZED)
    elif refusal == 500:
        applied.append("error")
        response = _json(500, {"error": "internal server error (simulated)"})
    elif refusal == 429:
        applied.append("throttle")
        response = _json(
            429,
            {"error": "too many requests (simulated)"},
            {"Retry-After": str(faults.retry_after_s)},
        )
    else:
        try:
            _check_site_token(ctx, request, site_id)
            body = b""
            if request.method == "POST":
                body = await _read_body(request)
                _check_signature(ctx, request, site_id, body)
            response, items = handler(ctx, site_id, request, body)
        except _Refused as exc:
            response = _refusal(exc)
        if request.method == "POST" and response.status_code < 300 and ctx.plan.draw_reset():
            applied.append("reset")
            response.headers[RESET_HEADER] = "1"
    ms = (time.perf_counter() - started) * 1000
    fault = ",".join(applied) or None
    ctx.store.log_request(
        request.method, request.url.path, site_id, response.status_code, items, fault, ms
    )
    if response.status_code >= 400:
        log.log(
            logging.DEBUG if fault else logging.INFO,
            "central api %s %s -> %d fault=%s",
            request.method,
            request.url.path,
            response.status_code,
            fault,
        )
    return response


async def _control_body(ctx: ReceiverContext, request: Request) -> tuple[str, dict[str, Any]]:
    """The site of the caller's token and the JSON object it sent (control plane)."""
    site_id = _site_of(ctx, _bearer(request))
    return site_id, _parse_object(await _read_body(request))


def create_receiver_app(ctx: ReceiverContext) -> FastAPI:
    """Build the receiver's FastAPI app around a context (store, faults, sites)."""
    app = FastAPI(
        title="Central billing & ticket system — reference receiver",
        description="Implements ../shared/contracts/central-api.md for tests, demo and bench.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def api_route(method: str, path: str, handler: Handler) -> None:
        async def endpoint(site_id: str, request: Request) -> Response:
            return await _serve_api(ctx, request, site_id, handler)

        app.add_api_route(path, endpoint, methods=[method])

    api_route("POST", "/v1/sites/{site_id}/meter-readings", _meter_readings)
    api_route("POST", "/v1/sites/{site_id}/incidents", _incidents)
    api_route("GET", "/v1/sites/{site_id}/ticket-updates", _ticket_updates)
    api_route("GET", "/v1/sites/{site_id}/outage-notices", _outage_notices)
    api_route("POST", "/v1/sites/{site_id}/heartbeat", _heartbeat)

    def control(
        fn: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except _Refused as exc:
                return _refusal(exc)

        return endpoint

    @control
    async def set_faults(request: Request) -> Response:
        _, doc = await _control_body(ctx, request)
        error = body_error(FAULTS, doc)
        if error is not None:
            raise _Refused(400, error)
        changes = {k: v for k, v in doc.items() if k not in ("clear", "down_for_s")}
        try:
            faults = ctx.plan.update(changes, clear=doc.get("clear", False))
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        log.info("faults set %s", faults.as_dict())
        headers = {DOWN_HEADER: str(doc["down_for_s"])} if "down_for_s" in doc else None
        return _json(200, {"faults": faults.as_dict()}, headers)

    @control
    async def add_ticket_update(request: Request) -> Response:
        site_id, doc = await _control_body(ctx, request)
        try:
            check_ticket_update(doc)
            update = ctx.store.add_ticket_update(site_id, **doc)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        except LookupError as exc:
            raise _Refused(404, str(exc)) from None
        return _json(201, update)

    @control
    async def add_outage_notice(request: Request) -> Response:
        site_id, doc = await _control_body(ctx, request)
        try:
            notice = complete_outage_notice(doc)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        return _json(201, ctx.store.add_outage_notice(site_id, notice))

    async def stats(request: Request) -> Response:
        return _json(200, {**ctx.store.stats(), "faults": ctx.plan.faults.as_dict()})

    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(ctx.store, ctx.plan.faults, sorted(ctx.sites)))

    app.add_api_route("/_sim/faults", set_faults, methods=["POST"])
    app.add_api_route("/_sim/ticket-updates", add_ticket_update, methods=["POST"])
    app.add_api_route("/_sim/outage-notices", add_outage_notice, methods=["POST"])
    app.add_api_route("/_sim/stats", stats, methods=["GET"])
    app.add_api_route("/", page, methods=["GET"])
    return app
