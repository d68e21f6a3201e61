"""Rule evaluators: from events (and the passing of time) to alarm conditions.

Each configured rule becomes one evaluator that turns events into *signals*:
"the condition of alarm <rule>:<source> is now active / inactive". The
engine turns signals into ISA-18.2 transitions; evaluators only know about
conditions, delays and hysteresis, never about acknowledgement or incidents.
The ``all_of`` rule is evaluated by the engine, because its inputs are other
alarms, not events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.alarms.plan import AbsenceRule, AggregateRule, MatchRule, ThresholdRule
from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.config import SiteConfig

ZERO_VOLTS = 5.0  # below this a meter's supply counts as lost
VOLTAGE_VALUES = ("voltage", "voltage_l1")


@dataclass(frozen=True)
class Device:
    """What the alarm engine knows of a configured device (from the site file)."""

    id: str
    kind: str
    name: str | None = None
    utility: str | None = None
    building: str | None = None
    role: str | None = None
    lot: str | None = None

    def attribute(self, key: str) -> str | None:
        value = getattr(self, key, None)
        return None if value is None else str(value)


class Directory:
    """Every device of the site by id, for rule filters and alarm locations."""

    def __init__(self, devices: Iterable[Device]) -> None:
        self.devices = {d.id: d for d in devices}

    @classmethod
    def from_config(cls, config: SiteConfig) -> Directory:
        d = config.devices
        devices = [Device(m.id, "meter", m.home, m.utility, m.building, m.role) for m in d.meters]
        devices += [Device(m.id, "io") for m in d.io_modules]
        devices += [Device(a.id, a.kind, a.name, lot=a.lot) for a in d.access_points]
        devices += [Device(w.id, "wand") for w in d.patrol_wands]
        return cls(devices)

    def matches(self, device_id: str | None, wanted: Mapping[str, str | list[str]]) -> bool:
        if not wanted:
            return True
        device = self.devices.get(device_id or "")
        if device is None:
            return False
        for key, allowed in wanted.items():
            value = device.attribute(key)
            if value is None or value not in ([allowed] if isinstance(allowed, str) else allowed):
                return False
        return True

    def select(self, wanted: Mapping[str, str | list[str]]) -> list[Device]:
        return [d for d in self.devices.values() if self.matches(d.id, wanted)]


@dataclass(frozen=True)
class Signal:
    """A rule's verdict on one source: the alarm condition is now (in)active."""

    rule: str
    source: str
    active: bool
    device: str | None
    location: str
    building: str | None = None
    momentary: bool = False


def field_at(payload: Mapping[str, Any], path: str) -> Any:
    """``instant.voltage`` → payload["instant"]["voltage"]; None when absent."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _where(directory: Directory, device: str | None, payload: Mapping[str, Any]) -> str:
    for key in ("where", "name"):
        if isinstance(payload.get(key), str) and payload[key]:
            return str(payload[key])
    known = directory.devices.get(device or "")
    if known is not None:
        parts = [p for p in (known.building, known.name or known.id) if p]
        return " ".join(parts)
    return device or "site"


class Debounce:
    """On-delay / off-delay per source: a change counts once it has lasted."""

    def __init__(self, on_delay_s: float, off_delay_s: float) -> None:
        self.on = timedelta(seconds=on_delay_s)
        self.off = timedelta(seconds=off_delay_s)
        self.state: dict[str, bool] = {}
        self.pending: dict[str, tuple[bool, datetime]] = {}

    def update(self, key: str, wanted: bool, now: datetime) -> bool | None:
        """Feed the raw condition; return the new debounced state if it changed now."""
        current = self.state.get(key, False)
        if wanted == current:
            self.pending.pop(key, None)
            return None
        delay = self.on if wanted else self.off
        if not delay:
            self.state[key] = wanted
            self.pending.pop(key, None)
            return wanted
        since = self.pending.setdefault(key, (wanted, now))[1]
        if now - since >= delay:
            self.state[key] = wanted
            del self.pending[key]
            return wanted
        return None

    def memory(self) -> dict[str, Any]:
        return {
            "state": {k: v for k, v in self.state.items() if v},
            "pending": {k: [w, to_rfc3339(t)] for k, (w, t) in self.pending.items()},
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.state = {str(k): bool(v) for k, v in data.get("state", {}).items()}
        self.pending = {
            str(k): (bool(w), parse_rfc3339(t)) for k, (w, t) in data.get("pending", {}).items()
        }

    def due(self, now: datetime) -> list[tuple[str, bool]]:
        """Changes whose delay has run out by ``now``."""
        done = []
        for key, (wanted, since) in list(self.pending.items()):
            if now - since >= (self.on if wanted else self.off):
                self.state[key] = wanted
                del self.pending[key]
                done.append((key, wanted))
        return done


@dataclass
class _Context:
    device: str | None
    location: str
    building: str | None


class _Debounced:
    """Memory shared by evaluators that debounce a condition per source."""

    rule_id: str
    directory: Directory
    debounce: Debounce
    context: dict[str, _Context]

    def _remember(self, source: str, device: str | None, payload: Mapping[str, Any]) -> None:
        """Where this source is, from its first event (for the alarm's location)."""
        if source not in self.context:
            known = self.directory.devices.get(device or "")
            where = _where(self.directory, device, payload)
            self.context[source] = _Context(device, where, known.building if known else None)

    def tick(self, now: datetime) -> list[Signal]:
        return [self._signal(key, state) for key, state in self.debounce.due(now)]

    def _signal(self, source: str, active: bool, *, momentary: bool = False) -> Signal:
        ctx = self.context[source]
        return Signal(
            self.rule_id, source, active, ctx.device, ctx.location, ctx.building, momentary
        )

    def seed(self, source: str, device: str | None, location: str, building: str | None) -> None:
        """A stored active alarm: its condition is active (after a restart)."""
        self.debounce.state[source] = True
        self.context.setdefault(source, _Context(device, location, building))

    def memory(self) -> dict[str, Any]:
        return {
            "debounce": self.debounce.memory(),
            "context": {k: [c.device, c.location, c.building] for k, c in self.context.items()},
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.debounce.restore(data.get("debounce", {}))
        for key, (device, location, building) in data.get("context", {}).items():
            self.context[key] = _Context(device, location, building)


class MatchEval(_Debounced):
    """Raise on a matching event; clear on its value, a clearing event, or at once."""

    def __init__(self, rule: MatchRule, directory: Directory) -> None:
        self.rule = rule
        self.rule_id = rule.id
        self.directory = directory
        self.kinds = set(rule.event) | set(rule.clear_event)
        self.debounce = Debounce(float(rule.on_delay_s), 0.0)
        self.context: dict[str, _Context] = {}

    def on_event(
        self, kind: str, device: str | None, payload: Mapping[str, Any], now: datetime
    ) -> list[Signal]:
        rule = self.rule
        if not self.directory.matches(device, rule.devices):
            return []
        if any(field_at(payload, k) != v for k, v in rule.when.items()):
            return []
        parts = [
            device or "-" if key == "device" else str(field_at(payload, key))
            for key in rule.instance
        ]
        source = "/".join(parts) or "site"
        self._remember(source, device, payload)
        if kind in rule.clear_event and kind not in rule.event:
            wanted = False
        elif rule.active_field is not None:
            wanted = field_at(payload, rule.active_field) in rule.active_values
        elif rule.clear_event:
            wanted = True  # stays active until a clearing event
        else:
            return [self._signal(source, True, momentary=True)]
        changed = self.debounce.update(source, wanted, now)
        return [] if changed is None else [self._signal(source, changed)]


class ThresholdEval(_Debounced):
    """A value beyond its limit, with deadband and on/off delays, per device."""

    def __init__(self, rule: ThresholdRule, directory: Directory) -> None:
        self.rule = rule
        self.rule_id = rule.id
        self.directory = directory
        self.kinds = set(rule.event)
        self.debounce = Debounce(float(rule.on_delay_s), float(rule.off_delay_s))
        self.raw: dict[str, bool] = {}
        self.context: dict[str, _Context] = {}

    def on_event(
        self, kind: str, device: str | None, payload: Mapping[str, Any], now: datetime
    ) -> list[Signal]:
        rule = self.rule
        if not self.directory.matches(device, rule.devices):
            return []
        value = next(
            (v for p in rule.value if isinstance(v := field_at(payload, p), int | float)), None
        )
        if value is None or isinstance(value, bool):
            return []
        source = device or "site"
        self._remember(source, device, payload)
        beyond = self.raw.get(source, False)
        band = float(rule.deadband) if beyond else 0.0  # leaving takes the deadband too
        if rule.below is not None:
            beyond = value < rule.below + band
        else:
            assert rule.above is not None
            beyond = value > rule.above - band
        self.raw[source] = beyond
        changed = self.debounce.update(source, beyond, now)
        return [] if changed is None else [self._signal(source, changed)]

    def seed(self, source: str, device: str | None, location: str, building: str | None) -> None:
        super().seed(source, device, location, building)
        self.raw[source] = True

    def memory(self) -> dict[str, Any]:
        return {**super().memory(), "raw": [k for k, v in self.raw.items() if v]}

    def restore(self, data: Mapping[str, Any]) -> None:
        super().restore(data)
        self.raw = dict.fromkeys(data.get("raw", []), True)


class AbsenceEval:
    """No event of the given kinds from a device for ``for_s``."""

    def __init__(self, rule: AbsenceRule, directory: Directory, started: datetime) -> None:
        self.rule = rule
        self.directory = directory
        self.kinds = set(rule.event)
        self.limit = timedelta(seconds=float(rule.for_s))
        # Counting starts when the engine starts: a restart is not evidence of silence.
        self.last_seen = {d.id: started for d in directory.select(rule.devices)}
        self.silent: set[str] = set()

    def on_event(
        self, kind: str, device: str | None, payload: Mapping[str, Any], now: datetime
    ) -> list[Signal]:
        if device not in self.last_seen:
            return []
        self.last_seen[device] = now
        if device in self.silent:
            self.silent.discard(device)
            return [self._signal(device, False)]
        return []

    def tick(self, now: datetime) -> list[Signal]:
        signals = []
        for device, seen in self.last_seen.items():
            if device not in self.silent and now - seen >= self.limit:
                self.silent.add(device)
                signals.append(self._signal(device, True))
        return signals

    def seed(self, source: str, device: str | None, location: str, building: str | None) -> None:
        if source in self.last_seen:
            self.silent.add(source)

    def memory(self) -> dict[str, Any]:
        return {
            "last_seen": {k: to_rfc3339(v) for k, v in self.last_seen.items()},
            "silent": sorted(self.silent),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        for device, seen in data.get("last_seen", {}).items():
            if device in self.last_seen:  # the gateway's own downtime is not the device's silence
                self.last_seen[device] = max(self.last_seen[device], parse_rfc3339(seen))
        self.silent = {d for d in data.get("silent", []) if d in self.last_seen}

    def _signal(self, device: str, active: bool) -> Signal:
        where = _where(self.directory, device, {})
        building = self.directory.devices[device].building
        return Signal(self.rule.id, device, active, device, where, building)


class AggregateEval:
    """Many members of a group down at once → one alarm for the group.

    A member is down while its health is offline or (``zero_voltage``) its
    last reading showed no supply. The group alarm is active while at least
    ``fraction`` of its members (and ``min_members``) are down, and clears
    once that has not been true for ``window_s`` — a building coming back
    meter by meter does not flap.
    """

    def __init__(self, rule: AggregateRule, directory: Directory) -> None:
        self.rule = rule
        self.directory = directory
        self.kinds = {"device.health", "meter.reading"}
        self.groups: dict[str, set[str]] = {}
        self.group_of: dict[str, str] = {}
        for device in directory.select(rule.devices):
            group = device.attribute(rule.group_by)
            if group is not None:
                self.groups.setdefault(group, set()).add(device.id)
                self.group_of[device.id] = group
        self.offline: set[str] = set()
        self.no_supply: set[str] = set()
        self.debounce = Debounce(0.0, float(rule.window_s))

    def on_event(
        self, kind: str, device: str | None, payload: Mapping[str, Any], now: datetime
    ) -> list[Signal]:
        group = self.group_of.get(device or "")
        if group is None or device is None:
            return []
        if kind == "device.health" and "offline" in self.rule.down_when:
            (self.offline.add if payload.get("state") == "offline" else self.offline.discard)(
                device
            )
        elif kind == "meter.reading" and "zero_voltage" in self.rule.down_when:
            volts = next(
                (
                    v
                    for p in VOLTAGE_VALUES
                    if isinstance(v := field_at(payload, f"instant.{p}"), int | float)
                ),
                None,
            )
            if volts is not None:
                (self.no_supply.add if volts < ZERO_VOLTS else self.no_supply.discard)(device)
            self.offline.discard(device)  # it answered
        else:
            return []
        changed = self.debounce.update(group, self.down(group), now)
        return [] if changed is None else [self._signal(group, changed)]

    def down(self, group: str) -> bool:
        members = self.groups[group]
        count = len(members & (self.offline | self.no_supply))
        return len(members) >= self.rule.min_members and count >= self.rule.fraction * len(members)

    def tick(self, now: datetime) -> list[Signal]:
        return [self._signal(key, state) for key, state in self.debounce.due(now)]

    def seed(self, source: str, device: str | None, location: str, building: str | None) -> None:
        self.debounce.state[source] = True

    def memory(self) -> dict[str, Any]:
        return {
            "debounce": self.debounce.memory(),
            "offline": sorted(self.offline),
            "no_supply": sorted(self.no_supply),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.debounce.restore(data.get("debounce", {}))
        self.offline = set(data.get("offline", []))
        self.no_supply = set(data.get("no_supply", []))

    def _signal(self, group: str, active: bool) -> Signal:
        building = group if self.rule.group_by == "building" else None
        return Signal(self.rule.id, group, active, None, group, building)


Evaluator = MatchEval | ThresholdEval | AbsenceEval | AggregateEval
