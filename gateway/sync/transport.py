"""What a way of reaching central must do, and how it says what went wrong.

The sender decides retries and dead letters from these exceptions alone, so
the HTTP and MQTT transports behave the same under faults: a delivery counts
only when central's answer has been received (an HTTP response parsed, an MQTT
PUBACK), never after a timeout "probably" worked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.sync.outbox import ItemResult, OutboxItem


class SyncError(Exception):
    """Base of the transport's failures; ``str()`` is the operator's text."""


class Transient(SyncError):
    """Try again later with the same content: 5xx, 408, 429, timeouts, resets."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthFailed(SyncError):
    """401/403: credentials or site id are wrong; an operator must act."""


class Refused(SyncError):
    """A 4xx for the whole request: not to be retried unchanged."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Transport(Protocol):
    """A way to deliver batches of one stream to central."""

    async def send(
        self, stream: str, batch_id: str, items: Sequence[OutboxItem]
    ) -> list[ItemResult]:
        """Deliver items; return central's answer per item it answered for.

        Items missing from the answer were not delivered and stay queued.
        Raises Transient, AuthFailed or Refused.
        """
        ...

    async def close(self) -> None: ...
