"""Device health: online / degraded / offline, with failure counters by kind.

A device is ``degraded`` after its first failed poll and ``offline`` after
``offline_after`` failures in a row; one success brings it back ``online``.
Only changes are reported (and logged, by the caller, once each): a guard
needs "meter B01-0101-E went offline at 08:03", not a line per failed poll.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class DeviceState(StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


@dataclass(frozen=True)
class HealthChange:
    """One state change, to be journalled as a ``device.health`` event."""

    device: str
    previous: DeviceState
    state: DeviceState
    reason: str | None

    def payload(self) -> dict[str, Any]:
        return {"previous": self.previous.value, "state": self.state.value, "reason": self.reason}


@dataclass
class DeviceHealth:
    """The health of one device and its counters since start."""

    device: str
    kind: str
    offline_after: int = 3
    state: DeviceState = DeviceState.UNKNOWN
    consecutive_failures: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_ok: datetime | None = None
    down_since: datetime | None = None

    def success(self, now: datetime) -> HealthChange | None:
        self.counters["ok"] += 1
        self.consecutive_failures = 0
        self.last_ok = now
        self.down_since = None
        return self._move(DeviceState.ONLINE, None)

    def failure(self, counter: str, message: str, now: datetime) -> HealthChange | None:
        self.counters[counter] += 1
        self.consecutive_failures += 1
        self.last_error = message
        if self.down_since is None:
            self.down_since = now
        if self.consecutive_failures >= self.offline_after:
            return self._move(DeviceState.OFFLINE, message)
        if self.state is DeviceState.OFFLINE:
            return None
        return self._move(DeviceState.DEGRADED, message)

    def _move(self, state: DeviceState, reason: str | None) -> HealthChange | None:
        if state is self.state:
            return None
        change = HealthChange(self.device, self.state, state, reason)
        self.state = state
        return change

    def snapshot(self) -> dict[str, Any]:
        """What the API shows for this device."""
        return {
            "device": self.device,
            "kind": self.kind,
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "counters": dict(self.counters),
            "last_error": self.last_error,
            "last_ok": None if self.last_ok is None else self.last_ok.isoformat(),
        }
