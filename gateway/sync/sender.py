"""The sync loop: feed the outbox, send batches by stream priority, settle answers.

One loop, one batch in flight: the order of the outbox is the order of
delivery, and after every batch the highest-priority stream with anything
queued goes next — so a fire incident waits at most for the batch already on
the wire. Central is one system: a transient failure (5xx, 429, timeout, a
reset) backs the whole loop off (capped exponential, jittered, at least
``Retry-After``) and the same batch goes again; 401/403 raises an alarm event
and backs off long (no retry storm); a request-level 4xx halves the batch until
the single item at fault is found and moved to the dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.clock import Clock, to_rfc3339
from gateway.errors import JournalError
from gateway.events import Event, new_event_id
from gateway.journal.store import Journal, insert_events
from gateway.sync import outbox
from gateway.sync.feeder import CHUNK, feed
from gateway.sync.outbox import METER_READINGS, PRIORITY, ItemResult, OutboxItem
from gateway.sync.transport import AuthFailed, Refused, SyncError, Transient, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SenderSettings:
    max_items: int = 1000
    max_bytes: int = 1_048_576 - 1024  # room for the envelope under central's 1 MiB
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    auth_backoff_s: float = 300.0
    idle_poll_s: float = 1.0
    in_flight: int = 2  # meter-reading batches on the wire at once


def retry_delay(attempt: int, initial: float, cap: float) -> float:
    """Capped exponential backoff with jitter in [½, 1] of the step: never a
    zero wait (no retry storm), never all sites in lockstep."""
    step = min(cap, initial * float(2 ** min(attempt, 30)))
    return step * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security


@dataclass
class StreamStats:
    """In-memory figures of one stream since start (the durable ones are in sync_streams)."""

    delivered: deque[tuple[float, int]] = field(default_factory=deque)
    answered: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("accepted", "duplicate", "stale", "rejected"), 0)
    )
    last_error: str | None = None
    last_error_at: str | None = None

    def items_per_s(self, window_s: float = 60.0) -> float:
        cutoff = time.monotonic() - window_s
        while self.delivered and self.delivered[0][0] < cutoff:
            self.delivered.popleft()
        return sum(n for _, n in self.delivered) / window_s


class SyncSender:
    """Delivers the outbox to central through a Transport (see module docstring)."""

    def __init__(
        self,
        journal: Journal,
        transport: Transport,
        clock: Clock,
        settings: SenderSettings | None = None,
    ) -> None:
        self.journal = journal
        self.transport = transport
        self.clock = clock
        self.settings = settings or SenderSettings()
        self.stats: dict[str, StreamStats] = {s: StreamStats() for s in PRIORITY}
        self.state = "idle"  # idle | sending | retrying | auth_failed
        self.retry_at: float | None = None  # wall-clock time of the next attempt when backing off
        self.last_error: str | None = None  # the latest failure of any stream, for the screen
        self._limit = dict.fromkeys(PRIORITY, self.settings.max_items)
        self._wake = asyncio.Event()
        self._failures = 0
        self._auth_failed = False
        self._batch_ids: dict[tuple[int, int, int], str] = {}
        self._in_flight: deque[tuple[list[OutboxItem], asyncio.Task[list[ItemResult]]]] = deque()
        self._settling: asyncio.Task[None] | None = None
        self._read_after = 0  # meter readings: last seq sent while its settle runs
        self._next_feed = 0.0

    def wake(self) -> None:
        """Something was queued: look now instead of at the next idle poll."""
        self._wake.set()

    def _now(self) -> str:
        return to_rfc3339(self.clock.now())

    async def run(self) -> None:
        try:
            while True:
                if time.monotonic() >= self._next_feed:
                    await self._feed()
                stream, batch = await self._next_batch()
                if stream == METER_READINGS:
                    self._launch(batch)
                    if len(self._in_flight) >= self.settings.in_flight:
                        await self._complete_oldest()
                elif batch:
                    while self._in_flight:  # a few bulk batches at most, then this one
                        await self._complete_oldest()
                    await self._deliver(stream, batch)
                elif self._in_flight:
                    await self._complete_oldest()
                elif not await self._rewind():
                    await self._idle()
        finally:
            await self._abandon_in_flight()
            if self._settling is not None:
                self._settling.cancel()

    async def _idle(self) -> None:
        self.state = "idle"
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.idle_poll_s):
                await self._wake.wait()
        self._next_feed = 0.0

    async def _feed(self) -> None:
        """Queue readings committed since the last look (all of them, in chunks).

        At most once a second while busy: each feed is a write that would
        otherwise wait behind every settle of a backlog drain."""
        while await self.journal.write(lambda conn: feed(conn, self._now())) >= CHUNK:
            pass
        self._next_feed = time.monotonic() + self.settings.idle_poll_s

    async def _next_batch(self) -> tuple[str, list[OutboxItem]]:
        def read(conn: Any) -> tuple[str, list[OutboxItem]]:
            for stream in PRIORITY:
                batch = outbox.next_batch(
                    conn,
                    stream,
                    self._read_after if stream == METER_READINGS else 0,
                    self._limit[stream],
                    self.settings.max_bytes,
                )
                if batch:
                    return stream, batch
            return "", []

        return await self.journal.query(read)

    async def _rewind(self) -> bool:
        """After a pipelined run: wait for the last settle and read from the
        start again (items central did not answer for are still queued there).
        Returns whether there was anything to rewind."""
        pending = self._settling is not None or self._read_after != 0
        await self._settled()
        self._read_after = 0
        return pending

    async def _settled(self) -> None:
        """Wait for the meter-reading settle in flight, if any."""
        task, self._settling = self._settling, None
        if task is not None:
            try:
                await task
            except JournalError as exc:  # not recorded: those items are simply sent again
                log.error("sync could not record central's answer (will resend): %s", exc)
                self._read_after = 0

    def _batch_id(self, batch: list[OutboxItem]) -> str:
        """The same content keeps its batch id across retries (central's logs)."""
        seqs = (batch[0].seq, batch[-1].seq, len(batch))
        if seqs not in self._batch_ids:
            if len(self._batch_ids) > 16:
                self._batch_ids.clear()
            self._batch_ids[seqs] = new_event_id()
        return self._batch_ids[seqs]

    async def _send(self, stream: str, batch: list[OutboxItem]) -> list[ItemResult]:
        results = await self.transport.send(stream, self._batch_id(batch), batch)
        sent = {item.item_id for item in batch}
        if not any(result.item_id in sent for result in results):
            raise Transient(f"central's answer names none of the {len(batch)} items sent")
        return results

    def _launch(self, batch: list[OutboxItem]) -> None:
        """Put a meter-reading batch on the wire without waiting for its answer.

        The bulk stream keeps ``in_flight`` batches going at once (each read
        after the last one sent), and records each answer while the next
        batches travel: after a week of WAN loss the drain is bounded by
        central, not by our own round trips."""
        self.state = "sending"
        task = asyncio.create_task(self._send(METER_READINGS, batch))
        self._in_flight.append((batch, task))
        self._read_after = batch[-1].seq

    async def _complete_oldest(self) -> None:
        batch, task = self._in_flight.popleft()
        try:
            results = await task
        except SyncError as exc:
            await self._finish_in_flight()
            await self._rewind()
            await self._failed(METER_READINGS, batch, exc)
            return
        await self._record(batch, results)

    async def _record(self, batch: list[OutboxItem], results: list[ItemResult]) -> None:
        await self._settled()
        self._settling = asyncio.create_task(self._settle(METER_READINGS, batch, results))

    async def _finish_in_flight(self) -> None:
        """After a failure: let the other sends end (they are not cancelled — a
        cancelled connect can leak its socket) and record what they delivered;
        the rest goes again after the pause."""
        while self._in_flight:
            batch, task = self._in_flight.popleft()
            try:
                results = await task
            except SyncError:
                continue
            await self._record(batch, results)

    async def _abandon_in_flight(self) -> None:
        """On stop: cancel the sends on the wire (their items stay queued)."""
        tasks = [task for _, task in self._in_flight]
        self._in_flight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, stream: str, batch: list[OutboxItem]) -> None:
        self.state = "sending"
        try:
            results = await self._send(stream, batch)
        except SyncError as exc:
            await self._rewind()
            await self._failed(stream, batch, exc)
            return
        await self._settle(stream, batch, results)

    async def _failed(self, stream: str, batch: list[OutboxItem], exc: SyncError) -> None:
        if isinstance(exc, AuthFailed):
            await self._auth_failure(stream, exc)
        elif isinstance(exc, Refused):
            await self._refused(stream, batch, exc)
        elif isinstance(exc, Transient):
            await self._transient(stream, exc)
        else:
            raise exc

    async def _settle(
        self, stream: str, batch: list[OutboxItem], results: list[ItemResult]
    ) -> None:
        now = self._now()
        restored = self._auth_failed

        def op(conn: Any) -> dict[str, int]:
            counts = outbox.settle(conn, stream, batch, results, now)
            events = []
            if counts["rejected"]:
                rejected = [r for r in results if r.status == "rejected"]
                events.append(_dead_letter_event(stream, rejected))
            if restored:
                events.append(Event("sync.auth_restored", None, {"stream": stream}))
            insert_events(conn, events)
            return counts

        counts = await self.journal.write(op)
        self._failures = 0
        self._auth_failed = False
        self.retry_at = None
        self._limit[stream] = min(self.settings.max_items, self._limit[stream] * 2)
        stats = self.stats[stream]
        stats.delivered.append((time.monotonic(), len(results)))
        for status, n in counts.items():
            stats.answered[status] += n
        if counts["rejected"]:
            log.warning(
                "sync rejected stream=%s items=%d (dead letters)", stream, counts["rejected"]
            )
        log.debug("sync delivered stream=%s %s", stream, counts)

    async def _transient(self, stream: str, exc: Transient) -> None:
        delay = retry_delay(
            self._failures, self.settings.backoff_initial_s, self.settings.backoff_max_s
        )
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self._failures += 1
        await self._note_error(stream, str(exc))
        # One line when trouble starts, then only every 10th attempt: a day of
        # WAN loss must not fill the log.
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning(
                "sync retrying stream=%s attempt=%d in_s=%.1f error=%s",
                stream,
                self._failures,
                delay,
                exc,
            )
        await self._back_off("retrying", delay)

    async def _auth_failure(self, stream: str, exc: AuthFailed) -> None:
        await self._note_error(stream, str(exc))
        if not self._auth_failed:
            self._auth_failed = True
            log.error("sync central refused our credentials stream=%s error=%s", stream, exc)
            await self.journal.submit(
                Event("sync.auth_failed", None, {"stream": stream, "error": str(exc)})
            )
        await self._back_off("auth_failed", self.settings.auth_backoff_s)

    async def _refused(self, stream: str, batch: list[OutboxItem], exc: Refused) -> None:
        if len(batch) > 1:
            # Find the item at fault by halving; the good ones go on the way.
            self._limit[stream] = max(1, len(batch) // 2)
            log.info(
                "sync refused stream=%s batch=%d status=%d: halving", stream, len(batch), exc.status
            )
            return
        item = batch[0]
        now = self._now()

        def op(conn: Any) -> None:
            outbox.move_to_dead_letters(conn, [(item, str(exc))], now)
            insert_events(
                conn, [_dead_letter_event(stream, [ItemResult(item.item_id, "rejected", str(exc))])]
            )

        await self.journal.write(op)
        self._limit[stream] = self.settings.max_items
        log.warning("sync dead letter stream=%s item=%s error=%s", stream, item.item_id, exc)

    async def _note_error(self, stream: str, error: str) -> None:
        now = self._now()
        stats = self.stats[stream]
        stats.last_error, stats.last_error_at = error, now
        self.last_error = error
        await self.journal.write(lambda conn: outbox.record_error(conn, stream, error, now))

    async def _back_off(self, state: str, delay: float) -> None:
        self.state = state
        self.retry_at = time.time() + delay
        await asyncio.sleep(delay)


def _dead_letter_event(stream: str, rejected: list[ItemResult]) -> Event:
    return Event(
        "sync.dead_letter",
        None,
        {
            "stream": stream,
            "count": len(rejected),
            "items": [{"id": r.item_id, "error": r.error} for r in rejected[:20]],
        },
    )
