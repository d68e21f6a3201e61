"""The alarm engine: ISA-18.2 lifecycle, escalation, suppression, flood and chatter.

It is deliberately synchronous and in memory: events, the passing of time and
operators' commands go in; *effects* come out (alarm rows to store, journal
events, incident revisions for central, automatic actions to run). The
service part (``gateway.alarms.service``) commits each batch of effects in one
journal write together with its event cursor, and only then tells anyone —
so an alarm the guard saw is durable, and after kill -9 every alarm is
exactly as it was (../shared/DESIGN.md, invariant 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.alarms.model import INCIDENT_STATES, Alarm, AlarmState, Entry
from gateway.alarms.plan import LINKAGE_ACTIONS, AlarmType, AllOfRule, Plan
from gateway.alarms.rules import (
    AbsenceEval,
    AggregateEval,
    Directory,
    Evaluator,
    MatchEval,
    Signal,
    ThresholdEval,
)
from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.events import Event, new_event_id

GATEWAY = "gateway"  # who did it, when nobody did
NOTICE_KINDS = ("central.outage_notice", "outage.planned")


def _after(now: datetime, seconds: float | None) -> str | None:
    return None if seconds is None else to_rfc3339(now + timedelta(seconds=float(seconds)))


class AlarmRefused(ValueError):
    """An operator's command that does not apply (e.g. acknowledging twice)."""


@dataclass(frozen=True)
class ActionRequest:
    """An automatic action the plan asks for, to run after the raise is committed."""

    alarm_id: str
    occurrence: str
    action: str


@dataclass(frozen=True)
class Notice:
    """A planned outage window (from central, or entered by a supervisor)."""

    notice_id: str
    utility: str
    scope: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime

    def covers(self, utility: str, building: str | None, now: datetime) -> bool:
        in_scope = "site" in self.scope or (building is not None and building in self.scope)
        return self.utility == utility and in_scope and self.starts_at <= now < self.ends_at


@dataclass
class Effects:
    """What one step of the engine changed, to commit in one transaction."""

    alarms: dict[str, Alarm] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: list[ActionRequest] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.alarms or self.events or self.incidents or self.actions)


class AlarmEngine:
    """All alarms of one site (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        directory: Directory,
        *,
        site_name: str,
        started: datetime,
        alarms: Iterable[Alarm] = (),
        notices: Iterable[Notice] = (),
        raises: Iterable[str] = (),
        flood: bool = False,
    ) -> None:
        self.plan = plan
        self.directory = directory
        self.site_name = site_name
        self.alarms: dict[str, Alarm] = {a.alarm_id: a for a in alarms}
        self.notices: dict[str, Notice] = {n.notice_id: n for n in notices}
        self.raises: list[datetime] = [parse_rfc3339(r) for r in raises]
        self.flood = flood
        self.evals: dict[str, Evaluator] = {}
        self.all_of: list[AllOfRule] = []
        for rule in plan.rules:
            if isinstance(rule, AllOfRule):
                self.all_of.append(rule)
            elif rule.kind == "match":
                self.evals[rule.id] = MatchEval(rule, directory)
            elif rule.kind == "threshold":
                self.evals[rule.id] = ThresholdEval(rule, directory)
            elif rule.kind == "absence":
                self.evals[rule.id] = AbsenceEval(rule, directory, started)
            else:
                self.evals[rule.id] = AggregateEval(rule, directory)
        self.by_kind: dict[str, list[Evaluator]] = {}
        for evaluator in self.evals.values():
            for kind in evaluator.kinds:
                self.by_kind.setdefault(kind, []).append(evaluator)
        self._interest = self._devices_of_interest()
        self._seed_conditions()
        self.fx = Effects()

    def _devices_of_interest(self) -> dict[str, frozenset[str] | None]:
        """Per event kind, the devices any rule looks at (None: any device).

        Meter readings are most of the journal; reading only those of meters a
        rule watches keeps the engine's share of the CPU small under load."""
        interest: dict[str, frozenset[str] | None] = {}
        for kind, evaluators in self.by_kind.items():
            devices: set[str] = set()
            for evaluator in evaluators:
                if isinstance(evaluator, AggregateEval):
                    devices |= set(evaluator.group_of)
                elif isinstance(evaluator, AbsenceEval):
                    devices |= set(evaluator.last_seen)
                elif not evaluator.rule.devices:
                    break
                else:
                    devices |= {d.id for d in self.directory.select(evaluator.rule.devices)}
            else:
                interest[kind] = frozenset(devices)
                continue
            interest[kind] = None
        return interest

    def wants(self, kind: str, device: str | None) -> bool:
        """Whether an event of ``kind`` from ``device`` can change any alarm."""
        if kind in NOTICE_KINDS:
            return True
        devices = self._interest.get(kind, frozenset())
        return devices is None or device in devices

    @property
    def kinds(self) -> frozenset[str]:
        """Event kinds the engine reads from the journal."""
        return frozenset(self.by_kind) | frozenset(NOTICE_KINDS)

    def take(self) -> Effects:
        """The effects accumulated since the last take."""
        fx, self.fx = self.fx, Effects()
        return fx

    # ---- inputs: events and time ------------------------------------------------------

    def on_event(
        self, kind: str, device: str | None, payload: Mapping[str, Any], at: datetime
    ) -> None:
        if kind in NOTICE_KINDS:
            self._add_notice(payload)
            self._review_suppression(at)
        for evaluator in self.by_kind.get(kind, ()):
            for signal in evaluator.on_event(kind, device, payload, at):
                self._apply(signal, at)

    def dry_run(
        self, kind: str, device: str | None, payload: Mapping[str, Any], at: datetime
    ) -> None:
        """Feed an event to the evaluators' memory only (replay after a restart)."""
        if kind in NOTICE_KINDS:
            self._add_notice(payload)
        for evaluator in self.by_kind.get(kind, ()):
            evaluator.on_event(kind, device, payload, at)

    def tick(self, now: datetime) -> None:
        """Everything that happens because time passed."""
        for evaluator in self.evals.values():
            for signal in evaluator.tick(now):
                self._apply(signal, now)
        self._review_all_of(now)
        for alarm in list(self.alarms.values()):
            if alarm.shelved_until and parse_rfc3339(alarm.shelved_until) <= now:
                alarm.shelved_until = alarm.shelve_reason = None
                self._log(alarm, "unshelved", GATEWAY, now, "搁置到期 shelve expired")
                self._reveal(alarm, now)
            if alarm.annunciated and not alarm.acked:
                self._escalate(alarm, now)
            if alarm.annunciated and alarm.active:
                self._check_on_scene(alarm, now)
            if alarm.chattering and not alarm.active:
                window = timedelta(seconds=float(self.plan.plan.chatter_window_s))
                if not alarm.activations or now - parse_rfc3339(alarm.activations[-1]) > window:
                    alarm.chattering = False
                    self.fx.alarms[alarm.alarm_id] = alarm
        self._review_suppression(now)
        self._review_flood(now)

    # ---- operators' commands ----------------------------------------------------------

    def acknowledge(self, alarm_id: str, who: str, now: datetime, note: str | None = None) -> Alarm:
        alarm = self._get(alarm_id)
        if alarm.acked:
            raise AlarmRefused(f"{alarm_id} needs no acknowledgement (state {alarm.state})")
        alarm.acked = True
        alarm.acked_at = to_rfc3339(now)
        alarm.acked_by = who
        alarm.handler = alarm.handler or who
        self._log(alarm, "acknowledged", who, now, note)
        return alarm

    def shelve(
        self, alarm_id: str, who: str, reason: str, duration_s: float, now: datetime
    ) -> Alarm:
        alarm = self._get(alarm_id)
        limit = float(self.plan.plan.shelve_max_h) * 3600
        if not 0 < duration_s <= limit:
            raise AlarmRefused(f"shelve for 1 s to {limit:.0f} s (the plan's shelve_max_h)")
        if alarm.out_of_service:
            raise AlarmRefused(f"{alarm_id} is out of service")
        if not reason.strip():
            raise AlarmRefused("shelving needs a reason")
        alarm.shelved_until = to_rfc3339(now + timedelta(seconds=duration_s))
        alarm.shelve_reason = reason
        alarm.supervisor = who
        self._log(alarm, "shelved", who, now, f"{reason} (until {alarm.shelved_until})")
        return alarm

    def unshelve(self, alarm_id: str, who: str, now: datetime) -> Alarm:
        alarm = self._get(alarm_id)
        if not alarm.shelved_until:
            raise AlarmRefused(f"{alarm_id} is not shelved")
        alarm.shelved_until = alarm.shelve_reason = None
        self._log(alarm, "unshelved", who, now)
        self._reveal(alarm, now)
        return alarm

    def remove_from_service(self, alarm_id: str, who: str, reason: str, now: datetime) -> Alarm:
        alarm = self._get(alarm_id)
        if alarm.out_of_service:
            raise AlarmRefused(f"{alarm_id} is already out of service")
        alarm.out_of_service = reason
        alarm.supervisor = who
        self._log(alarm, "out_of_service", who, now, reason)
        return alarm

    def return_to_service(self, alarm_id: str, who: str, now: datetime) -> Alarm:
        alarm = self._get(alarm_id)
        if not alarm.out_of_service:
            raise AlarmRefused(f"{alarm_id} is in service")
        alarm.out_of_service = None
        self._log(alarm, "in_service", who, now)
        self._reveal(alarm, now)
        return alarm

    def add_note(self, alarm_id: str, who: str, text: str, now: datetime) -> Alarm:
        alarm = self._get(alarm_id)
        self._log(alarm, "note", who, now, text)
        return alarm

    def tick_step(self, alarm_id: str, index: int, who: str, now: datetime) -> Alarm:
        """The guard ticks one of the plan's steps for the current occurrence."""
        alarm = self._get(alarm_id)
        if alarm.occurrence is None or not 0 <= index < len(alarm.steps):
            raise AlarmRefused(f"{alarm_id} has no step {index + 1}")
        if alarm.steps[index] is not None:
            raise AlarmRefused(f"step {index + 1} of {alarm_id} is already done")
        alarm.steps[index] = Entry(to_rfc3339(now), "step", who)
        step = self.plan.types[alarm.type].steps[index]
        self._log(alarm, "step_done", who, now, f"{index + 1}. {step.zh} / {step.en}")
        return alarm

    def on_scene(self, alarm_id: str, who: str, now: datetime) -> Alarm:
        """Someone is at the place: the plan's on-scene commitment is met (or late)."""
        alarm = self._get(alarm_id)
        if alarm.occurrence is None or alarm.on_scene_at is not None:
            raise AlarmRefused(f"{alarm_id}: on scene already recorded or nothing to attend")
        alarm.on_scene_at = to_rfc3339(now)
        self._log(alarm, "on_scene", who, now, "超时 late" if alarm.on_scene_missed else None)
        return alarm

    def assign(
        self, alarm_id: str, who: str, now: datetime, *, handler: str | None, supervisor: str | None
    ) -> Alarm:
        """Name the handler and the supervisor of the occurrence (the closed loop)."""
        alarm = self._get(alarm_id)
        if alarm.occurrence is None:
            raise AlarmRefused(f"{alarm_id} has no occurrence to assign")
        alarm.handler = handler or alarm.handler
        alarm.supervisor = supervisor or alarm.supervisor
        note = f"handler={alarm.handler} supervisor={alarm.supervisor}"
        self._log(alarm, "assigned", who, now, note)
        return alarm

    def record_action(self, alarm_id: str, occurrence: str, what: str, now: datetime) -> None:
        """An automatic action's outcome, into the occurrence's timeline."""
        alarm = self.alarms.get(alarm_id)
        if alarm is not None and alarm.occurrence == occurrence:
            self._log(alarm, "action", GATEWAY, now, what)

    # ---- views ------------------------------------------------------------------------

    def view(self, alarm: Alarm, now: datetime) -> dict[str, Any]:
        """An alarm as the API and the live stream show it."""
        kind = self.plan.types[alarm.type]
        respond_in = None
        if alarm.respond_by and not alarm.acked:
            respond_in = round((parse_rfc3339(alarm.respond_by) - now).total_seconds())
        ladder = [e.level for e in kind.escalation[: alarm.escalated]]
        return {
            "alarm_id": alarm.alarm_id,
            "occurrence": alarm.occurrence,
            "type": alarm.type,
            "name": kind.name,
            "name_en": kind.name_en,
            "priority": alarm.priority,
            "state": alarm.state.value,
            "process_state": alarm.process_state.value,
            "active": alarm.active,
            "acknowledged": alarm.acked,
            "location": alarm.location,
            "building": alarm.building,
            "device": alarm.device,
            "rule": alarm.rule,
            "raised_at": alarm.raised_at,
            "cleared_at": alarm.cleared_at,
            "acked_at": alarm.acked_at,
            "acked_by": alarm.acked_by,
            "respond_by": alarm.respond_by,
            "respond_in_s": respond_in,
            "on_scene_by": alarm.on_scene_by,
            "on_scene_at": alarm.on_scene_at,
            "on_scene_missed": alarm.on_scene_missed,
            "overdue": alarm.overdue,
            "escalated_to": [
                {
                    "level": lv,
                    "name": self.plan.level(lv).name,
                    "name_en": self.plan.level(lv).name_en,
                }
                for lv in ladder
            ],
            "commitment": kind.commitment,
            "commitment_en": kind.commitment_en,
            "steps": [
                {"zh": s.zh, "en": s.en, "done_at": d.at if d else None, "by": d.by if d else None}
                for s, d in zip(kind.steps, alarm.steps or [None] * len(kind.steps), strict=False)
            ],
            "shelved_until": alarm.shelved_until,
            "shelve_reason": alarm.shelve_reason,
            "suppressed": alarm.suppressed,
            "out_of_service": alarm.out_of_service,
            "chattering": alarm.chattering,
            "group": alarm.group,
            "first_out": alarm.first_out,
            "handler": alarm.handler,
            "supervisor": alarm.supervisor,
            "incident": kind.incident or "open_incident" in kind.actions,
            "timeline": [e.__dict__ for e in alarm.timeline],
        }

    # ---- the lifecycle ----------------------------------------------------------------

    def _get(self, alarm_id: str) -> Alarm:
        alarm = self.alarms.get(alarm_id)
        if alarm is None:
            raise KeyError(alarm_id)
        return alarm

    def _apply(self, signal: Signal, now: datetime) -> None:
        if signal.active:
            self._activate(signal, now)
            if signal.momentary:
                self._deactivate(signal, now)
        else:
            self._deactivate(signal, now)
        if any(signal.rule in rule.signals for rule in self.all_of):
            self._review_all_of(now)

    def _activate(self, signal: Signal, now: datetime) -> None:
        alarm_id = f"{signal.rule}:{signal.source}"
        alarm = self.alarms.get(alarm_id)
        rule = self.plan.rule(signal.rule)
        if alarm is None:
            alarm = Alarm(
                alarm_id,
                signal.rule,
                rule.type,
                signal.source,
                signal.device,
                signal.location,
                signal.building,
            )
            self.alarms[alarm_id] = alarm
        if alarm.active:
            return
        kind = self.plan.types[alarm.type]
        if alarm.acked or alarm.occurrence is None:  # from normal: a new occurrence
            alarm.occurrence = new_event_id()
            alarm.timeline = []
            alarm.steps = [None] * len(kind.steps)
            alarm.escalated = 0
            alarm.overdue = False
            alarm.revision = 0
            alarm.incident_open = False
            alarm.handler = alarm.supervisor = None
            alarm.acked_at = alarm.acked_by = None
            self._start_clock(alarm, kind, now)
        alarm.active = True
        alarm.acked = False
        alarm.cleared_at = None
        alarm.priority = self._priority(kind)
        alarm.suppressed = self._design_suppression(alarm, now)
        self._count_activation(alarm, now)
        self._log(alarm, "raised", GATEWAY, now, alarm.suppressed)
        if alarm.annunciated:
            self._annunciate(alarm, now)
        if rule.actions and not alarm.out_of_service:
            for action in kind.actions:
                if action in LINKAGE_ACTIONS:
                    self.fx.actions.append(ActionRequest(alarm_id, alarm.occurrence, action))

    def _deactivate(self, signal: Signal, now: datetime) -> None:
        alarm = self.alarms.get(f"{signal.rule}:{signal.source}")
        if alarm is None or not alarm.active:
            return
        alarm.active = False
        alarm.cleared_at = to_rfc3339(now)
        note = None
        if alarm.suppressed:  # over inside its planned window: nothing for the guard to do
            alarm.acked = True
            note = f"{alarm.suppressed}: 计划内,无需确认 by design, no acknowledgement needed"
        self._log(alarm, "cleared", GATEWAY, now, note)

    def _start_clock(self, alarm: Alarm, kind: AlarmType, now: datetime) -> None:
        alarm.raised_at = to_rfc3339(now)
        alarm.respond_by = _after(now, kind.respond_within_s)
        alarm.on_scene_by = _after(now, kind.on_scene_within_s)
        alarm.on_scene_at = None
        alarm.on_scene_missed = False

    def _priority(self, kind: AlarmType) -> str:
        during = set(kind.raise_to_p1_during)
        if during and any(a.active and a.type in during for a in self.alarms.values()):
            return "P1"
        return kind.priority

    def _count_activation(self, alarm: Alarm, now: datetime) -> None:
        window = timedelta(seconds=float(self.plan.plan.chatter_window_s))
        alarm.activations = [t for t in alarm.activations if now - parse_rfc3339(t) <= window] + [
            to_rfc3339(now)
        ]
        if len(alarm.activations) >= self.plan.plan.chatter_activations and not alarm.chattering:
            alarm.chattering = True
            self._log(alarm, "chattering", GATEWAY, now, f"{len(alarm.activations)} activations")

    def _annunciate(self, alarm: Alarm, now: datetime) -> None:
        """The guard is told: flood accounting, grouping, the incident opens."""
        alarm.group = f"{alarm.type}:{alarm.building or 'site'}"  # area: the building
        alarm.first_out = not any(
            other.group == alarm.group and other.annunciated and other is not alarm
            for other in self.alarms.values()
        )
        self.raises.append(now)
        self._review_flood(now)
        kind = self.plan.types[alarm.type]
        if (kind.incident or "open_incident" in kind.actions) and not alarm.incident_open:
            alarm.incident_open = True
            self._incident(alarm, now)

    def _reveal(self, alarm: Alarm, now: datetime) -> None:
        """Unshelved, back in service or no longer suppressed: tell the guard if it matters."""
        if alarm.annunciated and alarm.process_state is not AlarmState.NORMAL:
            self._annunciate(alarm, now)

    def _escalate(self, alarm: Alarm, now: datetime) -> None:
        kind = self.plan.types[alarm.type]
        if alarm.raised_at is None:
            return
        elapsed = (now - parse_rfc3339(alarm.raised_at)).total_seconds()
        while (
            alarm.escalated < len(kind.escalation)
            and elapsed >= kind.escalation[alarm.escalated].after_s
        ):
            level = self.plan.level(kind.escalation[alarm.escalated].level)
            alarm.escalated += 1
            alarm.supervisor = alarm.supervisor or level.id
            self._log(alarm, "escalated", GATEWAY, now, f"{level.name} / {level.name_en}")
        if alarm.respond_by and not alarm.overdue and now >= parse_rfc3339(alarm.respond_by):
            alarm.overdue = True
            self._log(alarm, "overdue", GATEWAY, now, f"respond-by {alarm.respond_by} passed")

    def _check_on_scene(self, alarm: Alarm, now: datetime) -> None:
        """On-scene commitment missed (e.g. lift maintenance not there in 30 min)."""
        due = alarm.on_scene_by
        if due and alarm.on_scene_at is None and not alarm.on_scene_missed:
            if now >= parse_rfc3339(due):
                alarm.on_scene_missed = True
                kind = self.plan.types[alarm.type]
                self._log(alarm, "on_scene_overdue", GATEWAY, now, kind.commitment)

    def _design_suppression(self, alarm: Alarm, now: datetime) -> str | None:
        kind = self.plan.types[alarm.type]
        if kind.utility is not None:
            for notice in self.notices.values():
                if notice.covers(kind.utility, alarm.building, now):
                    return f"planned:{notice.notice_id}"
        for rule_id in self.plan.rule(alarm.rule).suppressed_by:
            evaluator = self.evals.get(rule_id)
            assert isinstance(evaluator, AggregateEval)
            group = evaluator.group_of.get(alarm.device or "")
            parent = self.alarms.get(f"{rule_id}:{group}")
            if parent is not None and parent.active:
                return f"aggregate:{parent.alarm_id}"
        return None

    def _review_suppression(self, now: datetime) -> None:
        for alarm in list(self.alarms.values()):
            if not (alarm.active or alarm.suppressed):
                continue
            reason = self._design_suppression(alarm, now) if alarm.active else None
            if reason == alarm.suppressed:
                continue
            before, alarm.suppressed = alarm.suppressed, reason
            if reason is not None:
                self._log(alarm, "suppressed", GATEWAY, now, reason)
                continue
            note = None
            if before and before.startswith("planned:") and alarm.active:
                # Outlasted its planned window: unplanned from this moment.
                note = "计划停电/停水时段已过,按非计划处理 planned window over — now unplanned"
                alarm.acked = False
                self._start_clock(alarm, self.plan.types[alarm.type], now)
                alarm.escalated = 0
            self._log(alarm, "unsuppressed", GATEWAY, now, note)
            self._reveal(alarm, now)

    def _review_all_of(self, now: datetime) -> None:
        for rule in self.all_of:
            window = timedelta(seconds=float(rule.within_s))
            signals = [
                a
                for a in self.alarms.values()
                if a.rule in rule.signals
                and (a.active or (a.raised_at and now - parse_rfc3339(a.raised_at) <= window))
                and a.occurrence is not None
                and not a.out_of_service
            ]
            wanted = len(signals) >= 2
            current = self.alarms.get(f"{rule.id}:site")
            if wanted == bool(current and current.active):
                continue
            where = " + ".join(sorted({a.location for a in signals})) or self.site_name
            self._apply(Signal(rule.id, "site", wanted, None, where), now)

    def _review_flood(self, now: datetime) -> None:
        info = self.plan.plan
        window = timedelta(seconds=float(info.flood_window_s))
        self.raises = [t for t in self.raises if now - t <= window]
        count = len(self.raises)
        if not self.flood and count > info.flood_enter:
            self.flood = True
            self.fx.events.append(
                Event("alarm.flood", None, {"state": "started", "count": count}, received_at=now)
            )
        elif self.flood and count < info.flood_leave:
            self.flood = False
            self.fx.events.append(
                Event("alarm.flood", None, {"state": "ended", "count": count}, received_at=now)
            )

    def _add_notice(self, payload: Mapping[str, Any]) -> None:
        try:
            notice = Notice(
                str(payload["notice_id"]),
                str(payload["utility"]),
                tuple(str(s) for s in payload["scope"]),
                parse_rfc3339(str(payload["starts_at"])),
                parse_rfc3339(str(payload["ends_at"])),
            )
        except (KeyError, TypeError, ValueError):
            return  # central's pull validated it; a malformed local one never got this far
        self.notices[notice.notice_id] = notice

    def _log(
        self, alarm: Alarm, what: str, by: str, now: datetime, note: str | None = None
    ) -> None:
        """One transition: timeline entry, journal event, incident revision."""
        alarm.add(Entry(to_rfc3339(now), what, by, note))
        self.fx.alarms[alarm.alarm_id] = alarm
        self.fx.events.append(
            Event(
                f"alarm.{what}",
                alarm.device,
                {
                    "alarm_id": alarm.alarm_id,
                    "occurrence": alarm.occurrence,
                    "type": alarm.type,
                    "priority": alarm.priority,
                    "state": alarm.state.value,
                    "location": alarm.location,
                    "by": by,
                    "note": note,
                },
                received_at=now,
            )
        )
        if alarm.incident_open:  # (a first raise opens its incident in _annunciate)
            self._incident(alarm, now)

    def _incident(self, alarm: Alarm, now: datetime) -> None:
        kind = self.plan.types[alarm.type]
        alarm.revision += 1
        assert alarm.occurrence is not None
        self.fx.incidents[alarm.occurrence] = {
            "incident_id": alarm.occurrence,
            "revision": alarm.revision,
            "type": alarm.type,
            "priority": alarm.priority if alarm.priority != "P4" else "P3",
            "title": f"{kind.name} {alarm.location} / {kind.name_en}",
            "location": alarm.location,
            "state": INCIDENT_STATES.get(alarm.process_state, "open"),
            "opened_at": alarm.raised_at,
            "respond_by": alarm.respond_by,
            "updated_at": to_rfc3339(now),
            "handler": alarm.handler,
            "supervisor": alarm.supervisor,
            "timeline": [{"at": e.at, "what": e.what, "by": e.by} for e in alarm.timeline],
        }

    def _seed_conditions(self) -> None:
        """After a restart, evaluators start from the stored alarms' conditions."""
        for alarm in self.alarms.values():
            evaluator = self.evals.get(alarm.rule)
            if evaluator is not None and alarm.active:
                evaluator.seed(alarm.source, alarm.device, alarm.location, alarm.building)

    def memory(self) -> dict[str, Any]:
        return {rule_id: e.memory() for rule_id, e in self.evals.items()}

    def restore(self, memory: Mapping[str, Any]) -> None:
        for rule_id, data in memory.items():
            evaluator = self.evals.get(rule_id)
            if evaluator is not None:
                evaluator.restore(data)
        self._seed_conditions()
