"""MQTT device profiles: how one vendor's gate, door or barrier talks over MQTT.

A profile is a TOML file in config/profiles/ with ``[profile] kind =
"mqtt_access"`` (the Modbus loader skips these). It says which topics, below an
access point's ``topic_prefix``, carry which events; where in the JSON payload
the card, plate, direction … are; how vendor values translate to the gateway's
normalised ones; the device's own sequence number and clock; how the device
shows it is alive; and the command topics. A new vendor is a new file, not new
code. The format is documented in config/profiles/README.md.

Everything is checked at load time, one line per problem naming file, key
path, value and reason (like gateway.profiles), because a typo in a topic or a
value map does not fail at run time: the messages are just rejected, or worse,
a denial shows up as something else on the guard's screen.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path
from string import Template
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.profiles import (
    MQTT_ACCESS_KIND,
    is_mqtt_access_profile,
    load_folder,
)
from gateway.validation import describe_error, format_loc, read_config_text

# ---- the normalised vocabulary ---------------------------------------------------------

EVENT_KINDS: tuple[str, ...] = (
    "access.granted",
    "access.denied",
    "access.tailgating",
    "access.duress",
    "door.opened",
    "door.closed",
    "door.forced",
    "door.held_open",
    "door.remote_open",
    "vehicle.entry",
    "vehicle.exit",
    "barrier.opened",
    "barrier.closed",
    "barrier.fault",
    "barrier.loop_occupied",  # a vehicle on the loop under the arm (anti-crush)
    "barrier.loop_clear",
    "detector.alarm",  # a fire / smoke / gas detector in alarm (a signal for the alarm engine)
    "detector.normal",
    "device.keepalive",
    "device.status",
)

# Fields whose value is one of a fixed set: a value map (or the vendor already
# using the normalised word) turns the vendor's value into one of these.
ENUM_FIELDS: Mapping[str, tuple[str, ...]] = {
    "direction": ("in", "out"),
    "vehicle_class": ("temporary", "monthly", "vip", "stored_value", "unknown"),
    "plate_colour": ("blue", "yellow", "green", "yellow_green", "white", "black", "other"),
    "reason": (
        "no_permission",
        "outside_time_window",
        "card_expired",
        "unknown_card",
        "blacklisted",
        "lot_full",
        "anti_passback",
        "wrong_password",
        "interlock",
        "other",
    ),
    "method": (
        "card",
        "password",
        "face",
        "fingerprint",
        "qr",
        "plate",
        "button",
        "remote",
        "other",
    ),
    "mode": ("auto", "manual", "remote"),
    "result": ("granted", "denied"),
}
# Fields kept as text exactly as the device gave them (numbers become their digits).
TEXT_FIELDS: tuple[str, ...] = ("card", "plate", "door", "lot", "lane", "zone")
# Fields kept as a number.
NUMBER_FIELDS: tuple[str, ...] = ("confidence",)
FIELDS: tuple[str, ...] = TEXT_FIELDS + tuple(ENUM_FIELDS) + NUMBER_FIELDS

COMMANDS: tuple[str, ...] = ("open_door", "raise_barrier", "hold_open", "release")
# What a command payload template may use, e.g. ``{"id": "${request_id}"}``.
TEMPLATE_NAMES: tuple[str, ...] = ("request_id", "door", "duration_s", "timestamp_s")
TIME_FORMATS: tuple[str, ...] = ("rfc3339", "unix_s", "unix_ms", "local")
WILDCARD_KEY = "*"  # a value map's fallback for vendor values it does not list

Scalar = str | int | bool | float
_PATH_PART = re.compile(r"^[^.\s]{1,64}$")
_OFFSET = re.compile(r"^([+-])(\d\d):(\d\d)$")


# ---- the loaded profile ------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """A payload field that must equal a value (compared by ``value_key``)."""

    path: tuple[str, ...]
    equals: str


@dataclass(frozen=True)
class Rule:
    """One kind of message: a topic pattern, an optional condition, its event kind.

    ``kind`` is fixed, or ``kind_path`` is read and looked up in ``kind_map``.
    ``fields`` maps normalised names to payload paths; ``values`` holds the
    value maps of this rule merged over the profile's; ``fixed`` are
    normalised values every event of this rule carries.
    """

    topic: str
    levels: tuple[str, ...]
    when: Condition | None
    kind: str | None
    kind_path: tuple[str, ...] | None
    kind_map: Mapping[str, str]
    fields: Mapping[str, tuple[str, ...]]
    values: Mapping[str, Mapping[str, str]]
    fixed: Mapping[str, str]
    required: tuple[str, ...]


@dataclass(frozen=True)
class DeviceTime:
    """Where the device's own clock is in a payload and how it is written."""

    path: tuple[str, ...]
    format: str
    utc_offset: timezone | None


@dataclass(frozen=True)
class Liveness:
    """How a device shows it is alive: a status / Last-Will topic, keep-alives, or both."""

    status_topic: tuple[str, ...] | None
    status_path: tuple[str, ...] | None
    online: str | None
    offline: str | None
    keepalive_topic: tuple[str, ...] | None
    offline_after_s: float | None


@dataclass(frozen=True)
class Command:
    """A command topic, declared now, executed by the command service later.

    The command counts as done when a message on ``reply_topic`` carries the
    request id at ``reply_match`` (and satisfies ``reply_ok``), or when an
    event of kind ``ack_kind`` arrives, within ``timeout_s``.
    """

    name: str
    topic: str
    payload: Template
    reply_topic: str | None
    reply_match: tuple[str, ...] | None
    reply_ok: Condition | None
    ack_kind: str | None
    timeout_s: float


@dataclass(frozen=True)
class MqttProfile:
    """A validated MQTT access profile; ``id`` is the file name without ``.toml``."""

    id: str
    name: str
    rules: tuple[Rule, ...]
    sequence: tuple[str, ...] | None
    device_time: DeviceTime | None
    liveness: Liveness | None
    commands: Mapping[str, Command]
    source: Path

    def subscriptions(self, prefix: str) -> tuple[str, ...]:
        """Topic filters an access point with ``prefix`` must subscribe to (no duplicates)."""
        relative = [rule.topic for rule in self.rules]
        if self.liveness is not None:
            for levels in (self.liveness.status_topic, self.liveness.keepalive_topic):
                if levels is not None:
                    relative.append("/".join(levels))
        relative += [c.reply_topic for c in self.commands.values() if c.reply_topic is not None]
        return tuple(dict.fromkeys(f"{prefix}/{topic}" for topic in relative))


def value_key(value: Scalar) -> str:
    """The text a vendor value is compared by: TOML table keys are always strings,
    while devices send ``1``, ``true`` or ``"1"`` for the same thing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def topic_matches(levels: tuple[str, ...], topic_levels: list[str]) -> bool:
    """MQTT filter matching: ``+`` is one level, a final ``#`` any rest (also none)."""
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(topic_levels) or (level != "+" and level != topic_levels[i]):
            return False
    return len(levels) == len(topic_levels)


# ---- the file format, validated by pydantic ----------------------------------------------


def _topic(value: str) -> str:
    """A topic pattern below the access point's prefix, MQTT wildcards allowed."""
    if not value or value.startswith("/"):
        raise ValueError('is not a relative topic (no leading \'/\'; e.g. "event" or "+/Event")')
    levels = value.split("/")
    for i, level in enumerate(levels):
        if not level:
            raise ValueError("has an empty topic level ('//' or a trailing '/')")
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            raise ValueError("uses a wildcard inside a level ('+' and '#' must be a whole level)")
        if level == "#" and i != len(levels) - 1:
            raise ValueError("has '#' before the last level ('#' only ends a topic filter)")
    return value


def _plain_topic(value: str) -> str:
    _topic(value)
    if "+" in value.split("/") or "#" in value.split("/"):
        raise ValueError("is a topic to publish to: no '+' or '#' wildcards")
    return value


def _path(value: str) -> str:
    if not all(_PATH_PART.match(part) for part in value.split(".")):
        raise ValueError('is not a field path (dot-separated names, e.g. "Data.CardNo")')
    return value


def _event_kind(value: str) -> str:
    if value not in EVENT_KINDS:
        raise ValueError(f"is not a normalised event kind ({', '.join(EVENT_KINDS)})")
    return value


def _field_name(value: str) -> str:
    if value not in FIELDS:
        raise ValueError(f"is not a normalised field ({', '.join(FIELDS)})")
    return value


def _utc_offset(value: str) -> str:
    match = _OFFSET.match(value)
    if not match or int(match[2]) > 23 or int(match[3]) > 59:
        raise ValueError('is not a UTC offset ("+08:00", "-05:00")')
    return value


def _template(value: str) -> str:
    template = Template(value)
    if not template.is_valid():
        raise ValueError("is not a payload template ('$' starts ${name}; write '$$' for '$')")
    unknown = [name for name in template.get_identifiers() if name not in TEMPLATE_NAMES]
    if unknown:
        raise ValueError(
            f"uses ${{{unknown[0]}}}, which is not a template name ({', '.join(TEMPLATE_NAMES)})"
        )
    return value


def _one_of(what: str, allowed: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"is not {what} ({', '.join(allowed)})")
        return value

    return AfterValidator(check)


_Topic = Annotated[StrictStr, AfterValidator(_topic)]
_PlainTopic = Annotated[StrictStr, AfterValidator(_plain_topic)]
_Path = Annotated[StrictStr, AfterValidator(_path)]
_Kind = Annotated[StrictStr, AfterValidator(_event_kind)]
_FieldName = Annotated[StrictStr, AfterValidator(_field_name)]
_Value = StrictStr | StrictBool | StrictInt
_Seconds = Annotated[StrictFloat, Field(gt=0, le=86400)]


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Header(_Strict):
    name: StrictStr = Field(min_length=1)
    kind: Literal["mqtt_access"]


class _Condition(_Strict):
    field: _Path
    equals: _Value


class _Rule(_Strict):
    topic: _Topic
    when: _Condition | None = None
    kind: _Kind | None = None
    kind_field: _Path | None = None
    kind_map: dict[str, _Kind] | None = None
    fields: dict[_FieldName, _Path] = {}
    values: dict[_FieldName, dict[str, StrictStr]] = {}
    set: dict[_FieldName, StrictStr] = {}
    required: list[_FieldName] = []

    @model_validator(mode="after")
    def _one_kind(self) -> _Rule:
        """The kind is fixed or read from the payload, never both, never neither."""
        if (self.kind is None) == (self.kind_field is None):
            raise ValueError("needs either kind (fixed) or kind_field with kind_map")
        if (self.kind_field is None) != (self.kind_map is None):
            raise ValueError("kind_field and kind_map go together")
        return self


class _Sequence(_Strict):
    field: _Path


class _DeviceTime(_Strict):
    field: _Path
    format: Annotated[StrictStr, _one_of("a device time format", TIME_FORMATS)]
    utc_offset: Annotated[StrictStr, AfterValidator(_utc_offset)] | None = None

    @model_validator(mode="after")
    def _offset_for_local(self) -> _DeviceTime:
        """A wall-clock time without an offset is ambiguous unless the profile says where."""
        if (self.format == "local") != (self.utc_offset is not None):
            raise ValueError('utc_offset is needed with format = "local", and only then')
        return self


class _Liveness(_Strict):
    status_topic: _PlainTopic | None = None
    status_field: _Path | None = None
    online: _Value | None = None
    offline: _Value | None = None
    keepalive_topic: _PlainTopic | None = None
    offline_after_s: _Seconds | None = None

    @model_validator(mode="after")
    def _complete(self) -> _Liveness:
        """Each way of telling liveness needs all of its keys."""
        if self.status_topic is None and self.keepalive_topic is None:
            raise ValueError("needs status_topic and/or keepalive_topic")
        status = (self.online, self.offline)
        if (self.status_topic is None) != all(v is None for v in status) or (
            self.status_topic is not None and any(v is None for v in status)
        ):
            raise ValueError("status_topic, online and offline go together")
        if self.status_field is not None and self.status_topic is None:
            raise ValueError("status_field needs status_topic")
        if (self.keepalive_topic is None) != (self.offline_after_s is None):
            raise ValueError("keepalive_topic and offline_after_s go together")
        return self


class _Command(_Strict):
    topic: _PlainTopic
    payload: Annotated[StrictStr, AfterValidator(_template)]
    reply_topic: _Topic | None = None
    reply_match: _Path | None = None
    reply_ok: _Condition | None = None
    ack_kind: _Kind | None = None
    timeout_s: _Seconds = 5.0

    @model_validator(mode="after")
    def _has_ack(self) -> _Command:
        """A command is done only when the device says so: a reply or a state change."""
        if self.reply_topic is None and self.ack_kind is None:
            raise ValueError("needs reply_topic or ack_kind (how the device acknowledges)")
        if self.reply_topic is None and (self.reply_match or self.reply_ok):
            raise ValueError("reply_match and reply_ok need reply_topic")
        if (
            self.reply_match is not None
            and "request_id" not in Template(self.payload).get_identifiers()
        ):
            raise ValueError("reply_match needs ${request_id} in payload (what would match?)")
        return self


class _ProfileFile(_Strict):
    profile: _Header
    sequence: _Sequence | None = None
    device_time: _DeviceTime | None = None
    liveness: _Liveness | None = None
    values: dict[_FieldName, dict[str, StrictStr]] = {}
    rules: list[_Rule] = Field(min_length=1)
    commands: dict[Annotated[StrictStr, _one_of("a command", COMMANDS)], _Command] = {}


# ---- building the profile ----------------------------------------------------------------


def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _tz(offset: str) -> timezone:
    match = _OFFSET.match(offset)
    assert match is not None  # checked by _utc_offset
    sign = -1 if match[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


def _map_problems(name: str, mapping: Mapping[str, str], where: str) -> list[str]:
    """A value map may only produce normalised values (text fields take no map)."""
    allowed = ENUM_FIELDS.get(name)
    if allowed is None:
        return [f"{where}: {name} is kept as given and takes no value map"]
    return [
        f'{where}."{key}": "{value}" is not a normalised {name} ({", ".join(allowed)})'
        for key, value in mapping.items()
        if value not in allowed
    ]


def _rule_problems(rule: _Rule, where: str) -> list[str]:
    problems: list[str] = []
    for name, mapping in rule.values.items():
        problems += _map_problems(name, mapping, f"{where}.values.{name}")
    for name, value in rule.set.items():
        if name not in ENUM_FIELDS:
            problems.append(f"{where}.set.{name}: only fields with normalised values can be set")
        elif value not in ENUM_FIELDS[name]:
            allowed = ", ".join(ENUM_FIELDS[name])
            problems.append(f'{where}.set.{name}: "{value}" is not a normalised {name} ({allowed})')
    for name in rule.required:
        if name not in rule.fields:
            problems.append(f'{where}.required: "{name}" is not in this rule\'s fields')
    return problems


def _build(data: _ProfileFile, path: Path) -> MqttProfile:
    src = str(path)
    problems: list[str] = []
    for name, mapping in data.values.items():
        problems += _map_problems(name, mapping, f"{src}: values.{name}")
    for i, rule in enumerate(data.rules):
        problems += _rule_problems(rule, f"{src}: rules[{i}]")
    if problems:
        raise ConfigError(problems)
    return MqttProfile(
        id=path.stem,
        name=data.profile.name,
        rules=tuple(_rule(rule, data.values) for rule in data.rules),
        sequence=_split(data.sequence.field) if data.sequence else None,
        device_time=_device_time(data.device_time) if data.device_time else None,
        liveness=_liveness(data.liveness) if data.liveness else None,
        commands={name: _command(name, cmd) for name, cmd in data.commands.items()},
        source=path,
    )


def _rule(rule: _Rule, profile_values: Mapping[str, Mapping[str, str]]) -> Rule:
    return Rule(
        topic=rule.topic,
        levels=tuple(rule.topic.split("/")),
        when=_condition(rule.when) if rule.when else None,
        kind=rule.kind,
        kind_path=_split(rule.kind_field) if rule.kind_field else None,
        kind_map=dict(rule.kind_map or {}),
        fields={name: _split(field) for name, field in rule.fields.items()},
        values={**profile_values, **rule.values},
        fixed=dict(rule.set),
        required=tuple(rule.required),
    )


def _condition(model: _Condition) -> Condition:
    return Condition(path=_split(model.field), equals=value_key(model.equals))


def _device_time(model: _DeviceTime) -> DeviceTime:
    return DeviceTime(
        path=_split(model.field),
        format=model.format,
        utc_offset=_tz(model.utc_offset) if model.utc_offset else None,
    )


def _liveness(model: _Liveness) -> Liveness:
    return Liveness(
        status_topic=tuple(model.status_topic.split("/")) if model.status_topic else None,
        status_path=_split(model.status_field) if model.status_field else None,
        online=None if model.online is None else value_key(model.online),
        offline=None if model.offline is None else value_key(model.offline),
        keepalive_topic=tuple(model.keepalive_topic.split("/")) if model.keepalive_topic else None,
        offline_after_s=model.offline_after_s,
    )


def _command(name: str, model: _Command) -> Command:
    return Command(
        name=name,
        topic=model.topic,
        payload=Template(model.payload),
        reply_topic=model.reply_topic,
        reply_match=_split(model.reply_match) if model.reply_match else None,
        reply_ok=_condition(model.reply_ok) if model.reply_ok else None,
        ack_kind=model.ack_kind,
        timeout_s=model.timeout_s,
    )


# ---- loading -----------------------------------------------------------------------------


def parse_mqtt_profile(text: str, path: Path) -> MqttProfile:
    """Validate profile text read from ``path``; ConfigError lists every problem."""
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    try:
        data = _ProfileFile.model_validate(raw)
    except ValidationError as exc:
        hint = "see config/profiles/README.md, MQTT access profiles"
        raise ConfigError(
            [
                describe_error(error, f"{path}: {format_loc(error['loc'])}", keys_hint=hint)
                for error in exc.errors()
            ]
        ) from None
    return _build(data, path)


def load_mqtt_profile(path: Path) -> MqttProfile:
    """Read and validate one MQTT access profile file."""
    return parse_mqtt_profile(read_config_text(path), path)


def load_mqtt_profiles(folder: Path) -> dict[str, MqttProfile]:
    """Every ``*.toml`` in ``folder`` whose ``[profile] kind`` is ``mqtt_access``, by id.

    Modbus profiles in the same folder are left to gateway.profiles; one
    ConfigError carries the problems of all MQTT files.
    """
    return load_folder(folder, is_mqtt_access_profile, load_mqtt_profile)


__all__ = [
    "COMMANDS",
    "ENUM_FIELDS",
    "EVENT_KINDS",
    "FIELDS",
    "MQTT_ACCESS_KIND",
    "Command",
    "Condition",
    "DeviceTime",
    "Liveness",
    "MqttProfile",
    "Rule",
    "load_mqtt_profile",
    "load_mqtt_profiles",
    "parse_mqtt_profile",
    "topic_matches",
    "value_key",
]
