"""One alarm and its ISA-18.2 state, as stored and as shown.

An alarm is one rule's view of one source (a contact, a door, a building):
``alarm_id`` is ``rule:source`` and never changes, so its state survives
restarts under the same key. Each time it goes from normal to active it
starts a new *occurrence* — the incident central ticketed — with its own id,
timeline, respond-by time and plan steps.

The displayed state follows ISA-18.2 / IEC 62682 (../shared/research/ALARMS.md):
out of service, shelved and suppressed-by-design hide an alarm from the
guard but it is still evaluated; otherwise the condition (active or not) and
the acknowledgement give normal / unacknowledged / acknowledged /
returned-to-normal-unacknowledged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class AlarmState(StrEnum):
    NORMAL = "normal"
    UNACKNOWLEDGED = "unacknowledged"
    ACKNOWLEDGED = "acknowledged"
    RTN_UNACKNOWLEDGED = "rtn_unacknowledged"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"
    OUT_OF_SERVICE = "out_of_service"


INCIDENT_STATES: dict[AlarmState, str] = {
    AlarmState.UNACKNOWLEDGED: "open",
    AlarmState.ACKNOWLEDGED: "acknowledged",
    AlarmState.RTN_UNACKNOWLEDGED: "resolved",
    AlarmState.NORMAL: "closed",
}
"""The contract's ticket states (open | acknowledged | resolved | closed)."""

TIMELINE_LIMIT = 200  # entries kept per occurrence (the incident carries them all)


@dataclass
class Entry:
    """One line of an occurrence's timeline: what happened, when, who did it."""

    at: str
    what: str
    by: str
    note: str | None = None


@dataclass
class Alarm:
    """Current state of one alarm (see the module docstring)."""

    alarm_id: str
    rule: str
    type: str
    source: str
    device: str | None
    location: str
    building: str | None = None
    priority: str = "P3"
    active: bool = False
    acked: bool = True
    shelved_until: str | None = None
    shelve_reason: str | None = None
    suppressed: str | None = None
    out_of_service: str | None = None
    occurrence: str | None = None
    raised_at: str | None = None
    cleared_at: str | None = None
    acked_at: str | None = None
    acked_by: str | None = None
    respond_by: str | None = None
    on_scene_by: str | None = None
    on_scene_at: str | None = None
    on_scene_missed: bool = False
    escalated: int = 0
    overdue: bool = False
    steps: list[Entry | None] = field(default_factory=list)
    timeline: list[Entry] = field(default_factory=list)
    revision: int = 0
    incident_open: bool = False
    activations: list[str] = field(default_factory=list)
    chattering: bool = False
    group: str | None = None
    first_out: bool = False
    handler: str | None = None
    supervisor: str | None = None

    @property
    def state(self) -> AlarmState:
        if self.out_of_service:
            return AlarmState.OUT_OF_SERVICE
        if self.shelved_until:
            return AlarmState.SHELVED
        if self.suppressed:
            return AlarmState.SUPPRESSED
        return self.process_state

    @property
    def process_state(self) -> AlarmState:
        """The A–D state of ISA-18.2, ignoring shelving and suppression."""
        if self.active:
            return AlarmState.ACKNOWLEDGED if self.acked else AlarmState.UNACKNOWLEDGED
        return AlarmState.NORMAL if self.acked else AlarmState.RTN_UNACKNOWLEDGED

    @property
    def annunciated(self) -> bool:
        """Shown to the guard as needing attention."""
        return self.state in (
            AlarmState.UNACKNOWLEDGED,
            AlarmState.ACKNOWLEDGED,
            AlarmState.RTN_UNACKNOWLEDGED,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Alarm:
        data: dict[str, Any] = json.loads(text)
        data["timeline"] = [Entry(**e) for e in data.get("timeline", [])]
        data["steps"] = [None if s is None else Entry(**s) for s in data.get("steps", [])]
        return cls(**data)

    def add(self, entry: Entry) -> None:
        self.timeline.append(entry)
        del self.timeline[:-TIMELINE_LIMIT]
