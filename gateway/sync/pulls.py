"""Pulls from central: ticket updates and planned outage notices.

Each feed is read page by page from its persisted cursor; a page and its new
cursor commit together. An entry that does not match the contract is logged
and skipped (central's mistake must not stop the feed); an answer that is not
a feed at all is a transient error, tried again next interval.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter, ValidationError

from gateway.clock import Clock, to_rfc3339
from gateway.journal.store import Journal
from gateway.sync.central_state import apply_outage_notices, apply_ticket_updates, get_cursor
from gateway.sync.http import HttpTransport
from gateway.sync.transport import SyncError, Transient

log = logging.getLogger(__name__)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class TicketUpdate(_Entry):
    cursor: str | None = None
    ticket_no: str | None = None
    incident_id: str
    state: str
    note: str | None = None
    at: AwareDatetime | None = None


class OutageNotice(_Entry):
    notice_id: str
    utility: str
    scope: list[str]
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    reason: str | None = None


FEEDS: dict[str, tuple[str, type[_Entry]]] = {
    "ticket-updates": ("updates", TicketUpdate),
    "outage-notices": ("notices", OutageNotice),
}
_PAGE = TypeAdapter(dict[str, Any])


class CentralPulls:
    """Polls central's feeds every ``interval_s``."""

    def __init__(self, journal: Journal, http: HttpTransport, clock: Clock, interval_s: float):
        self.journal = journal
        self.http = http
        self.clock = clock
        self.interval_s = interval_s
        self.last_success: dict[str, str] = {}
        self.last_error: dict[str, str] = {}

    async def run(self) -> None:
        while True:
            await self.pull_all()
            await asyncio.sleep(self.interval_s)

    async def pull_all(self) -> None:
        for name in FEEDS:
            try:
                await self.pull(name)
            except SyncError as exc:
                if self.last_error.get(name) != str(exc):
                    log.warning("sync pull failed feed=%s error=%s", name, exc)
                self.last_error[name] = str(exc)
            else:
                self.last_success[name] = to_rfc3339(self.clock.now())
                self.last_error.pop(name, None)

    async def pull(self, name: str, max_pages: int = 100) -> int:
        """Read a feed to its end (at most ``max_pages``); return entries stored."""
        key, model = FEEDS[name]
        stored = 0
        for _ in range(max_pages):
            cursor = await self.journal.query(lambda conn: get_cursor(conn, name))
            page = await self.http.get_json(f"/{name}", {"after": cursor} if cursor else {})
            try:
                body = _PAGE.validate_python(page)
                raw = body[key]
                next_cursor = str(body["next"])
                if not isinstance(raw, list):
                    raise TypeError(f"{key} is not a list")
            except (ValidationError, KeyError, TypeError) as exc:
                raise Transient(f"GET /{name}: not a {name} feed ({exc})") from exc
            entries = [e for e in (_valid(model, name, entry) for entry in raw) if e is not None]
            if not raw:
                break
            await self._apply(name, entries, next_cursor)
            stored += len(entries)
            if next_cursor == cursor:
                break
        return stored

    async def _apply(self, name: str, entries: list[dict[str, Any]], cursor: str) -> None:
        now = to_rfc3339(self.clock.now())
        if name == "ticket-updates":
            await self.journal.write(lambda conn: apply_ticket_updates(conn, entries, cursor))
        else:
            await self.journal.write(lambda conn: apply_outage_notices(conn, entries, cursor, now))


def _valid(model: type[_Entry], feed: str, entry: Any) -> dict[str, Any] | None:
    try:
        parsed = model.model_validate(entry)
    except ValidationError as exc:
        log.error(
            "sync pull: skipped an entry of %s that breaks the contract: %s %r",
            feed,
            exc.errors()[0]["msg"],
            entry,
        )
        return None
    data = parsed.model_dump(mode="json")
    for key in ("at", "starts_at", "ends_at"):
        value = getattr(parsed, key, None)
        if value is not None:
            data[key] = to_rfc3339(value.astimezone(UTC))
    return data
