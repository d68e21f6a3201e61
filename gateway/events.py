"""Events: the one currency between adapters, the journal, alarms and sync.

An event is a small frozen record of something a device (or a person) did.
Its ``id`` is stable: a producer that retries after a crash or a timeout sends
the same id again, and the journal stores it once. Ids made here are
time-ordered (ULID: 48-bit milliseconds, then 80 random bits), because random
keys scatter inserts across SQLite's B-tree and make the journal ~5× slower
(../shared/research/DEVICES.md).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from gateway.clock import to_rfc3339, utc_now

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_KIND = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


class _UlidSource:
    """Monotonic ULIDs: within one millisecond the random part counts up, so ids
    made by this process always sort in the order they were made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def next(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1
            else:
                rand = int.from_bytes(os.urandom(10), "big")
            self._last_ms, self._last_rand = ms, rand
        value = (ms << 80) | (rand & ((1 << 80) - 1))
        chars = []
        for _ in range(26):
            chars.append(_CROCKFORD[value & 31])
            value >>= 5
        return "".join(reversed(chars))


_ulids = _UlidSource()


def new_event_id() -> str:
    """A fresh, time-ordered, globally unique id (26-character ULID)."""
    return _ulids.next()


def check_kind(kind: str) -> str:
    """Validate an event kind such as ``meter.reading`` or ``gate.access``."""
    if not _KIND.match(kind):
        raise ValueError(f"event kind {kind!r} must be dotted lower-case words, e.g. 'gate.access'")
    return kind


def check_event_id(event_id: str) -> str:
    """Validate a caller-supplied id: printable ASCII without spaces, ≤ 200 chars."""
    if not _ID.match(event_id):
        raise ValueError(f"event id {event_id!r} must be 1–200 printable ASCII characters")
    return event_id


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened at the site, as the gateway received it.

    ``received_at`` is the gateway's UTC clock; ``device_time`` is the device's
    own clock when it reports one — both are kept because device clocks drift
    and billing and patrol checks need to know which one they trust.
    ``payload`` must be JSON-serialisable and is not copied; treat it as frozen.
    """

    kind: str
    device: str | None
    payload: Mapping[str, Any] = field(default_factory=dict)
    device_time: datetime | None = None
    received_at: datetime = field(default_factory=utc_now)
    id: str = field(default_factory=new_event_id)

    def as_row(self) -> tuple[str, str, str | None, str | None, str, str]:
        """The journal's row for this event (id, kind, device, device_time,
        received_at, payload JSON).

        orjson, because this is on every event's path and the stdlib encoder was
        the largest single cost of the MQTT intake. It writes a non-finite
        float as ``null`` instead of refusing it, so each producer refuses
        those at its own edge: the MQTT parser, the meters' validation, the
        API's event intake. What orjson cannot write (an integer beyond 64
        bits) goes through the stdlib encoder as before."""
        return (
            self.id,
            self.kind,
            self.device,
            None if self.device_time is None else to_rfc3339(self.device_time),
            _utc_text(self.received_at),
            _payload_json(self.payload),
        )


def _payload_json(payload: Mapping[str, Any]) -> str:
    try:
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@lru_cache(maxsize=64)
def _utc_text(moment: datetime) -> str:
    """``received_at`` as stored; cached because a batch of events (a burst of gate
    messages, one commit's worth) shares one receive time."""
    return to_rfc3339(moment.astimezone(UTC))
