"""Runs the service's parts in one TaskGroup; restarts a part that crashes.

A part is a named coroutine function that runs until cancelled (an adapter's
poll loop, the HTTP server, a sync stream). One part crashing must not take
the guard room's gateway down: it is logged, marked ``restarting`` and run
again after a capped, jittered backoff (after a site-wide power cut every
device comes back at once; jitter spreads the reconnects). A part that raises
``PartFailed`` has a problem restarting cannot fix and is marked ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.errors import PartFailed

log = logging.getLogger(__name__)

PartFactory = Callable[[], Awaitable[None]]


class PartState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class PartHealth:
    """What the health endpoint and the metrics show for one part."""

    name: str
    state: PartState = PartState.STARTING
    restarts: int = 0
    last_error: str | None = None


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base·2^attempt))."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))  # noqa: S311


class Supervisor:
    """Owns the parts' tasks; see the module docstring."""

    def __init__(
        self, *, backoff_base: float = 0.5, backoff_cap: float = 30.0, stable_after: float = 60.0
    ) -> None:
        self._parts: dict[str, PartFactory] = {}
        self._health: dict[str, PartHealth] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._stable_after = stable_after

    def add(self, name: str, factory: PartFactory) -> None:
        """Register a part before ``run()``; ``factory()`` is awaited each (re)start."""
        if name in self._parts:
            raise ValueError(f"part {name!r} is already registered")
        self._parts[name] = factory
        self._health[name] = PartHealth(name)

    def health(self) -> dict[str, PartHealth]:
        return dict(self._health)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every part until ``stop`` is set, then cancel them all at once."""
        async with asyncio.TaskGroup() as group:
            self._tasks = [
                group.create_task(self._keep_running(name, factory), name=f"part:{name}")
                for name, factory in self._parts.items()
            ]
            await stop.wait()
            log.info("stopping parts=%s", ",".join(self._parts))
            for task in self._tasks:
                task.cancel()

    async def _keep_running(self, name: str, factory: PartFactory) -> None:
        health = self._health[name]
        attempt = 0
        while True:
            health.state = PartState.RUNNING
            started = time.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                health.state = PartState.STOPPED
                raise
            except PartFailed as exc:
                health.state = PartState.FAILED
                health.last_error = str(exc)
                log.error("part failed part=%s error=%s (not restarted)", name, exc)
                return
            except Exception as exc:
                health.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("part crashed part=%s restarts=%d", name, health.restarts)
            else:
                health.state = PartState.STOPPED
                log.info("part finished part=%s", name)
                return
            if time.monotonic() - started >= self._stable_after:
                attempt = 0
            delay = backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_cap)
            attempt += 1
            health.restarts += 1
            health.state = PartState.RESTARTING
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                health.state = PartState.STOPPED
                raise
