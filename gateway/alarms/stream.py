"""The live stream of alarm changes: one bounded queue per subscriber.

Only committed changes are published (the journal comes first). A subscriber
that falls behind by more than its queue is dropped with a final "resync"
message rather than letting memory grow (../shared/DESIGN.md, invariant 7);
the screen reconnects and starts from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

QUEUE = 1000


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self.dropped = False


class AlarmStream:
    """Fan-out of alarm messages to every connected screen."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self.seq = 0

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, message: dict[str, Any]) -> None:
        self.seq += 1
        message = {"seq": self.seq, **message}
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:
                log.warning("alarm stream subscriber too slow; dropped (it will resync)")
                sub.dropped = True
                self._subs.discard(sub)
                with contextlib.suppress(asyncio.QueueFull, asyncio.QueueEmpty):
                    sub.queue.get_nowait()
                    sub.queue.put_nowait({"seq": self.seq, "type": "resync"})
