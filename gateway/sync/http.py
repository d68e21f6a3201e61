"""The HTTP transport of ../shared/contracts/central-api.md, on httpx.

Batches are assembled from the item bodies exactly as queued (no re-encoding),
so a retry after a timeout carries byte-for-byte the same content. Each
request with a body is signed when the site has a signing secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from gateway import __version__
from gateway.sync.outbox import HEARTBEAT, INCIDENTS, METER_READINGS, ItemResult, OutboxItem
from gateway.sync.transport import AuthFailed, Refused, Transient

log = logging.getLogger(__name__)

_STATUSES = {"accepted", "duplicate", "stale", "rejected"}
# stream → (path under /v1/sites/{site}/, list key in the body, id key in results)
_ROUTES: dict[str, tuple[str, str, str]] = {
    METER_READINGS: ("meter-readings", "readings", "reading_id"),
    INCIDENTS: ("incidents", "incidents", "incident_id"),
}


def sign(secret: bytes, body: bytes, now: float) -> dict[str, str]:
    """The contract's signature headers for a request body."""
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"X-Signature": f"sha256={digest}", "X-Timestamp": str(int(now))}


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _problem(response: httpx.Response) -> str:
    text = response.text[:300].replace("\n", " ")
    return f"HTTP {response.status_code} from {response.request.url.path}: {text}"


def check_status(response: httpx.Response) -> None:
    """Raise the transport error a non-2xx answer stands for."""
    status = response.status_code
    if status < 300:
        return
    if status in (401, 403):
        raise AuthFailed(_problem(response))
    if status in (408, 429) or status >= 500:
        raise Transient(_problem(response), retry_after(response.headers.get("Retry-After")))
    raise Refused(_problem(response), status)


class HttpTransport:
    """Sends batches and pulls feeds over one keep-alive HTTP connection pool."""

    def __init__(
        self,
        base_url: str,
        site_id: str,
        token: str,
        *,
        signing_secret: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._prefix = f"/v1/sites/{site_id}"
        self._secret = signing_secret.encode("utf-8") if signing_secret else None
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"site-gateway/{__version__}",
            },
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, self._prefix + path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Transient(f"{method} {path}: no answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Transient(
                f"{method} {path}: connection failed ({type(exc).__name__}: {exc})"
            ) from exc
        check_status(response)
        return response

    async def post(self, path: str, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers.update(sign(self._secret, body, time.time()))
        return await self._request("POST", path, content=body, headers=headers)

    async def get_json(self, path: str, params: Mapping[str, str]) -> Any:
        response = await self._request("GET", path, params=dict(params))
        try:
            return response.json()
        except ValueError as exc:
            raise Transient(f"GET {path}: answer is not JSON: {response.text[:200]!r}") from exc

    async def send(
        self, stream: str, batch_id: str, items: Sequence[OutboxItem]
    ) -> list[ItemResult]:
        if stream == HEARTBEAT:
            # Latest-only stream: one item, answered 204 with no body.
            await self.post("/heartbeat", items[-1].body.encode("utf-8"))
            return [ItemResult(item.item_id, "accepted") for item in items]
        path, key, id_key = _ROUTES[stream]
        head = f'{{"batch_id":"{batch_id}",' if stream == METER_READINGS else "{"
        body = f'{head}"{key}":[{",".join(i.body for i in items)}]}}'.encode()
        response = await self.post(f"/{path}", body)
        return parse_results(response, id_key)


def parse_results(response: httpx.Response, id_key: str) -> list[ItemResult]:
    """Central's per-item results; an answer we cannot read delivers nothing."""
    try:
        results = response.json()["results"]
        out = []
        for entry in results:
            status = entry["status"]
            if status not in _STATUSES:
                raise ValueError(f"unknown status {status!r}")
            out.append(
                ItemResult(
                    str(entry[id_key]),
                    status,
                    error=entry.get("error"),
                    ticket_no=entry.get("ticket_no"),
                )
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise Transient(
            f"POST {response.request.url.path}: unreadable answer ({exc}): {response.text[:200]!r}"
        ) from exc
    return out


def heartbeat_body(at: str, backlog: Mapping[str, int], online: int, offline: int) -> str:
    """The contract's heartbeat body."""
    return json.dumps(
        {
            "at": at,
            "version": __version__,
            "backlog": dict(backlog),
            "devices": {"online": online, "offline": offline},
        },
        separators=(",", ":"),
    )
