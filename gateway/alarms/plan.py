"""The site's contingency plan (应急预案) as data: alarm types and the rules that raise them.

One TOML file (``config/contingency-plan.toml`` ships the default plan of
../shared/research/ALARMS.md). For each alarm type: names in Chinese and
English, priority, response commitments, the escalation ladder with timers,
the plan's ordered steps, automatic actions, and whether it opens a ticket at
central. Rules say which events raise and clear alarms of a type. Everything
a site may change is here, not in code (../shared/DESIGN.md, invariant 5), and
every problem is reported as "file: key: value reason" like the site file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.validation import describe_error, format_loc, parse_toml, read_config_text

Priority = Literal["P1", "P2", "P3", "P4"]
PRIORITY_NAMES: Mapping[str, tuple[str, str]] = {
    "P1": ("特急", "very urgent"),
    "P2": ("急", "urgent"),
    "P3": ("一般", "normal"),
    "P4": ("提示", "notice"),
}
Action = Literal["release_gates", "raise_barriers", "open_incident"]
LINKAGE_ACTIONS = frozenset({"release_gates", "raise_barriers"})
"""Fire linkage: only a rule that ANDs two independent signals may trigger these
(GB 50116-2013 §4.1.6)."""

DEVICE_KEYS = ("id", "kind", "utility", "building", "role", "lot")
"""Device attributes a rule's ``devices`` filter may test (from the site file)."""


def _ident(value: str) -> str:
    if not value or not all(c.isalnum() or c in "_-." for c in value) or len(value) > 64:
        raise ValueError("is not a valid id (letters, digits, '_', '.', '-'; at most 64)")
    return value


def _clock_time(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError("is not a time of day (HH:MM, 00:00–23:59)")
    return value


def _number(value: Any) -> Any:
    # TOML has types: "60" or true where seconds belong is a mistake to report once,
    # not to coerce (and not two lines, one per numeric type).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("is not a number")
    return float(value)


def _scalar(value: Any) -> Any:
    if not isinstance(value, str | bool | int) or isinstance(value, float):
        raise ValueError("is not a text, true/false or a whole number")
    return value


Ident = Annotated[str, AfterValidator(_ident)]
Number = Annotated[float, BeforeValidator(_number)]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]
Scalar = Annotated[str | bool | int, BeforeValidator(_scalar)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Level(_Strict):
    """One rung of the escalation ladder (guard on duty → … → project manager)."""

    id: Ident
    name: Text
    name_en: Text


class Escalation(_Strict):
    """Notify ``level`` when the alarm is still unacknowledged ``after_s`` after it was raised."""

    level: Ident
    after_s: Positive


class Step(_Strict):
    zh: Text
    en: Text


class AlarmType(_Strict):
    """One kind of emergency or fault and what the plan commits to for it."""

    name: Text
    name_en: Text
    priority: Priority
    ack_within_s: Positive | None = None
    on_scene_within_s: Positive | None = None
    commitment: Text | None = None
    commitment_en: Text | None = None
    escalation: list[Escalation] = []
    steps: list[Step] = []
    actions: list[Action] = []
    incident: StrictBool = False
    utility: Literal["electricity", "water", "gas"] | None = None
    """For outage types: the utility whose planned notices suppress it in their window."""
    raise_to_p1_during: list[Ident] = []
    """Alarm types during which this one counts as P1 (a barrier fault during a fire)."""

    @property
    def respond_within_s(self) -> float | None:
        """The respond-by countdown: acknowledge first, then on scene."""
        return self.ack_within_s or self.on_scene_within_s


class _RuleBase(_Strict):
    id: Ident
    type: Ident
    name: Text | None = None
    devices: dict[str, StrictStr | list[StrictStr]] = {}
    actions: StrictBool = True
    """Run the type's automatic actions when this rule raises the alarm."""
    suppressed_by: list[Ident] = []
    """Aggregate rules whose active alarm over this device's group hides this one by design."""

    @model_validator(mode="after")
    def _device_keys(self) -> _RuleBase:
        for key in self.devices:
            if key not in DEVICE_KEYS:
                raise ValueError(
                    f"devices.{key} is not a device attribute ({', '.join(DEVICE_KEYS)})"
                )
        return self


class MatchRule(_RuleBase):
    """Raise on an event (a relay contact, door forced); clear on another or on its value."""

    kind: Literal["match"]
    event: list[StrictStr] = Field(min_length=1)
    when: dict[str, Scalar] = {}
    active_field: StrictStr | None = None
    active_values: list[Scalar] = [True]
    clear_event: list[StrictStr] = []
    instance: list[StrictStr] = ["device"]
    on_delay_s: NonNegative = 0


class ThresholdRule(_RuleBase):
    """A value beyond a limit for ``on_delay_s``; back inside by ``deadband``
    for ``off_delay_s``."""

    kind: Literal["threshold"]
    event: list[StrictStr] = Field(min_length=1)
    value: list[StrictStr] = Field(min_length=1)
    below: Number | None = None
    above: Number | None = None
    deadband: NonNegative = 0
    on_delay_s: NonNegative = 0
    off_delay_s: NonNegative = 0

    @model_validator(mode="after")
    def _one_limit(self) -> ThresholdRule:
        if (self.below is None) == (self.above is None):
            raise ValueError("needs exactly one of 'below' or 'above'")
        return self


class AbsenceRule(_RuleBase):
    """No event of these kinds from a device for ``for_s`` (a silent heartbeat)."""

    kind: Literal["absence"]
    event: list[StrictStr] = Field(min_length=1)
    for_s: Positive


class AggregateRule(_RuleBase):
    """Many members of a group down at once → one alarm for the group."""

    kind: Literal["aggregate"]
    group_by: Literal["building", "lot", "kind", "utility"]
    down_when: list[Literal["offline", "zero_voltage"]] = Field(min_length=1)
    fraction: Annotated[Number, Field(gt=0, le=1)] = 0.5
    min_members: Annotated[StrictInt, Field(ge=1)] = 2
    window_s: Positive = 60


class AllOfRule(_RuleBase):
    """Two (or more) independent signals active together: e.g. fire confirmed."""

    kind: Literal["all_of"]
    signals: list[Ident] = Field(min_length=2)
    within_s: Positive = 300


Rule = Annotated[
    MatchRule | ThresholdRule | AbsenceRule | AggregateRule | AllOfRule,
    Field(discriminator="kind"),
]


class PlanInfo(_Strict):
    name: Text
    name_en: Text
    shelve_max_h: Positive = 24
    flood_enter: Annotated[StrictInt, Field(ge=1)] = 10
    flood_leave: Annotated[StrictInt, Field(ge=0)] = 5
    flood_window_s: Positive = 600
    chatter_activations: Annotated[StrictInt, Field(ge=2)] = 3
    chatter_window_s: Positive = 60
    stale_after_h: Positive = 24
    shifts: list[Annotated[str, AfterValidator(_clock_time)]] = Field(
        default=["08:00", "20:00"], min_length=1
    )

    @model_validator(mode="after")
    def _flood_band(self) -> PlanInfo:
        if self.flood_leave >= self.flood_enter:
            raise ValueError("flood_leave must be below flood_enter (a band, not a flicker)")
        return self


class Plan(_Strict):
    """A whole contingency plan, validated."""

    plan: PlanInfo
    levels: list[Level] = Field(min_length=1)
    types: dict[Ident, AlarmType] = Field(min_length=1)
    rules: list[Rule] = []

    def rule(self, rule_id: str) -> Rule:
        return next(r for r in self.rules if r.id == rule_id)

    def level(self, level_id: str) -> Level:
        return next(level for level in self.levels if level.id == level_id)


def _cross_checks(plan: Plan, source: str) -> list[str]:
    problems: list[str] = []
    level_ids = {level.id for level in plan.levels}
    first: dict[str, int] = {}
    for i, level in enumerate(plan.levels):
        if level.id in first:
            problems.append(
                f'{source}: levels[{i}].id: "{level.id}" is already used by '
                f"levels[{first[level.id]}]"
            )
        first.setdefault(level.id, i)
    if len(set(plan.plan.shifts)) != len(plan.plan.shifts):
        problems.append(f"{source}: plan.shifts: a shift start is listed twice")
    for name, kind in plan.types.items():
        key = f"{source}: types.{name}"
        previous = 0.0
        for i, step in enumerate(kind.escalation):
            if step.level not in level_ids:
                problems.append(
                    f'{key}.escalation[{i}].level: "{step.level}" is not a level '
                    f"({', '.join(sorted(level_ids))})"
                )
            if step.after_s <= previous:
                problems.append(
                    f"{key}.escalation[{i}].after_s: {step.after_s:g} must be later than the "
                    "level before it"
                )
            previous = float(step.after_s)
        for i, other in enumerate(kind.raise_to_p1_during):
            if other not in plan.types:
                problems.append(
                    f'{key}.raise_to_p1_during[{i}]: "{other}" is not an alarm type of this plan'
                )
    seen: dict[str, int] = {}
    kinds = {rule.id: rule.kind for rule in plan.rules}
    for i, rule in enumerate(plan.rules):
        key = f"{source}: rules[{i}]"
        if rule.id in seen:
            problems.append(f'{key}.id: "{rule.id}" is already used by rules[{seen[rule.id]}]')
        seen.setdefault(rule.id, i)
        alarm_type = plan.types.get(rule.type)
        if alarm_type is None:
            problems.append(
                f'{key}.type: "{rule.type}" is not an alarm type of this plan '
                f"({', '.join(sorted(plan.types))})"
            )
        elif rule.actions and LINKAGE_ACTIONS & set(alarm_type.actions) and rule.kind != "all_of":
            problems.append(
                f"{key}.actions: true would release gates and raise barriers on one signal; "
                f'GB 50116 §4.1.6 needs two — set actions = false and confirm with an "all_of" rule'
            )
        for j, other in enumerate(rule.suppressed_by):
            if kinds.get(other) != "aggregate":
                problems.append(f'{key}.suppressed_by[{j}]: "{other}" is not an aggregate rule')
        if isinstance(rule, AllOfRule):
            for j, signal in enumerate(rule.signals):
                if signal not in kinds or signal == rule.id:
                    problems.append(f'{key}.signals[{j}]: "{signal}" is not another rule')
                elif kinds[signal] == "all_of":
                    problems.append(f'{key}.signals[{j}]: "{signal}" is itself an all_of rule')
    return problems


def parse_plan(text: str, source: Path) -> Plan:
    """Validate contingency-plan text; raise ConfigError listing every problem."""
    name = str(source)
    data = parse_toml(text, name)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(error, name) for error in exc.errors()]) from None
    problems = _cross_checks(plan, name)
    if problems:
        raise ConfigError(problems)
    return plan


_RULE_KINDS = "match, threshold, absence, aggregate, all_of"


def _describe(error: Any, source: str) -> str:
    # Drop pydantic's union tags ('match', 'threshold', …) from the key path.
    tags = {"match", "threshold", "absence", "aggregate", "all_of", "float", "int"}
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in tags))
    where = f"{source}: {format_loc(loc)}"
    if error["type"] == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        return f'{where}.kind: "{tag}" is not a rule kind ({_RULE_KINDS})'
    if error["type"] == "union_tag_not_found":
        return (
            f"{where}.kind: required key is missing (match, threshold, absence, aggregate, all_of)"
        )
    return describe_error(error, where, keys_hint="a typo? see docs/alarms.md")


def shipped_plan_path() -> Path:
    """The default plan in the repository's config folder."""
    return Path(__file__).resolve().parents[2] / "config" / "contingency-plan.toml"


def load_plan(path: Path | str | None = None) -> Plan:
    """Read and validate a plan file (the shipped default when ``path`` is None)."""
    path = Path(path) if path is not None else shipped_plan_path()
    return parse_plan(read_config_text(path, " (the contingency plan)"), path)
