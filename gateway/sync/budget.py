"""The disk budget of the backlog: alarm at 80 %, thin at 100 %, never drop billing data.

After days of WAN loss the outbox is the one thing on the box that grows
without bound, so it has a configured size. The watcher looks every few
seconds (one indexed scan in the read pool) and:

* at 80 % raises ``sync.backlog_high`` (once per crossing; cleared below 70 %);
* at 100 % thins the oldest raw interval readings of periods whose closing
  reading central already holds, down to 90 % (``outbox.thin``), and raises
  ``sync.backlog_full`` if that was not enough — period closes, incidents and
  records are never dropped, so the budget may then be overrun: a bill is
  worth more than a disk alarm.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.clock import Clock, to_rfc3339
from gateway.events import Event
from gateway.journal.store import Journal, insert_events
from gateway.sync import outbox
from gateway.sync.outbox import Backlog

log = logging.getLogger(__name__)

HIGH = 0.8
CLEAR = 0.7
THIN_TO = 0.9


class BacklogWatch:
    """Keeps the latest backlog figures and enforces the budget."""

    def __init__(self, journal: Journal, clock: Clock, budget_bytes: int, check_s: float = 10.0):
        self.journal = journal
        self.clock = clock
        self.budget_bytes = budget_bytes
        self.check_s = check_s
        self.level = "normal"  # normal | high | full
        self.latest: dict[str, Backlog] = {}
        self.dead_letters = 0

    @property
    def total_bytes(self) -> int:
        return sum(b.bytes for b in self.latest.values())

    @property
    def used(self) -> float:
        """Fraction of the budget in use (may exceed 1.0 when nothing can be thinned)."""
        return self.total_bytes / self.budget_bytes

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.check_s)

    async def refresh(self) -> None:
        """Read the backlog figures (for status pages; changes nothing)."""
        self.latest = await self.journal.query(outbox.backlog)
        self.dead_letters = await self.journal.query(outbox.count_dead_letters)

    async def check(self) -> None:
        """Refresh the figures and enforce the budget (alarm, thinning)."""
        await self.refresh()
        if self.used >= 1.0:
            await self._thin()
            self.latest = await self.journal.query(outbox.backlog)
        used = self.used
        if used >= 1.0:
            level = "full"
        elif used >= HIGH or (self.level != "normal" and used >= CLEAR):
            level = "high"  # and it stays high until below 70 %: no flapping at 80 %
        else:
            level = "normal"
        if level != self.level:
            await self._announce(level, used)

    async def _thin(self) -> None:
        excess = self.total_bytes - int(self.budget_bytes * THIN_TO)

        def op(conn: Any) -> tuple[int, int]:
            items, freed = outbox.thin(conn, excess)
            if items:
                insert_events(
                    conn,
                    [
                        Event(
                            "sync.thinned",
                            None,
                            {"items": items, "bytes": freed, "budget_bytes": self.budget_bytes},
                        )
                    ],
                )
            return items, freed

        items, freed = await self.journal.write(op)
        if items:
            log.warning(
                "sync backlog over budget: thinned raw readings items=%d bytes=%d", items, freed
            )

    async def _announce(self, level: str, used: float) -> None:
        self.level = level
        payload = {
            "bytes": self.total_bytes,
            "budget_bytes": self.budget_bytes,
            "percent": round(used * 100, 1),
            "at": to_rfc3339(self.clock.now()),
        }
        (log.info if level == "normal" else log.warning)(
            "sync backlog level=%s percent=%.1f bytes=%d", level, used * 100, self.total_bytes
        )
        await self.journal.submit(Event(f"sync.backlog_{level}", None, payload))
