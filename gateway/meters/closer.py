"""The period-close part: at 00:00 site time on the 1st, every billed meter owes a reading.

At start it catches up the last boundary (a gateway that was down at midnight
still owes, and will estimate, the close of meters it read before); then it
sleeps until the next boundary in short steps (so a clock correction is
noticed), opens the new period and asks the pollers to read every billed
meter at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from zoneinfo import ZoneInfo

from gateway.clock import Clock
from gateway.meters.book import MeterBook
from gateway.meters.period import last_boundary, next_boundary

log = logging.getLogger(__name__)

MAX_SLEEP_S = 30.0


async def run_period_closer(
    book: MeterBook,
    clock: Clock,
    zone: ZoneInfo,
    poll_now: Callable[[Sequence[str]], None],
) -> None:
    """Runs as a supervised part (never returns)."""
    await book.open_period(last_boundary(clock.now(), zone), only_known_before=True)
    billed = [m.id for m in book.meters.values() if m.role == "billed"]
    while True:
        boundary = next_boundary(clock.now(), zone)
        while (remaining := (boundary - clock.now()).total_seconds()) > 0:
            await clock.sleep(min(remaining, MAX_SLEEP_S))
        log.info("billing boundary reached at=%s meters=%d", boundary.isoformat(), len(billed))
        await book.open_period(boundary, only_known_before=False)
        poll_now(billed)
