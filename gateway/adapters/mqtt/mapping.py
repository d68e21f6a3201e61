"""One MQTT message from an access point → one normalised event, or a reason why not.

``map_message`` is pure: no I/O, no clock, no state, so the MQTT service can
call it on its receive path and the tests can hammer it with any bytes. It
never raises on a topic or payload; a message it cannot use comes back as
``Rejected`` with a reason from a fixed set, which the service counts per
reason (the guard's "why is this gate silent" question) and logs.

An event keeps the vendor payload beside the normalised fields (``raw``), and
gets a stable id from the device's own sequence number when it has one, so a
QoS 1 redelivery is stored once by the journal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

import orjson

from gateway.adapters.mqtt.profile import (
    ENUM_FIELDS,
    NUMBER_FIELDS,
    WILDCARD_KEY,
    Condition,
    DeviceTime,
    MqttProfile,
    Rule,
    topic_matches,
    value_key,
)
from gateway.events import Event

MAX_PAYLOAD = 64 * 1024  # bytes; an access event is a few hundred
RejectReason = Literal[
    "too_large",
    "not_utf8",
    "not_json",
    "not_an_object",
    "unknown_topic",
    "no_rule_matched",
    "missing_field",
    "bad_field_type",
    "unknown_value",
    "bad_device_time",
]
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)
# Device clocks outside this range are wrong, not old or future events.
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_SEQUENCE = re.compile(r"^[\x21-\x7e]{1,64}$")  # must fit in an event id
MISSING = object()
# isinstance against a prebuilt tuple: ``str | int | float`` builds a union on every call
_SCALARS = (str, int, float)
_NUMBERS = (int, float)


class AccessPointLike(Protocol):
    """What mapping needs of an access point (gateway.config.AccessPoint has it)."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def topic_prefix(self) -> str: ...

    @property
    def lot(self) -> str | None: ...


@dataclass(frozen=True)
class MappedEvent:
    """A message that became an event; ``stable_id`` says whether a redelivery
    would get the same id (the device numbered it)."""

    event: Event
    stable_id: bool


@dataclass(frozen=True)
class Rejected:
    """A message that did not become an event: ``reason`` to count, ``detail`` to log."""

    reason: RejectReason
    detail: str


class _Reject(Exception):
    """Raised inside this module only, turned into ``Rejected`` by ``map_message``."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def map_message(
    point: AccessPointLike,
    profile: MqttProfile,
    topic: str,
    payload: bytes,
    received_at: datetime,
) -> MappedEvent | Rejected:
    """The event ``payload`` on ``topic`` stands for, or why it stands for none.

    Checks run cheapest first: size, topic, text, JSON, then the profile's rules
    in file order (the first whose topic and condition match decides).
    """
    try:
        return _map(point, profile, topic, payload, received_at)
    except _Reject as reject:
        return Rejected(reject.reason, reject.detail)


def _map(
    point: AccessPointLike,
    profile: MqttProfile,
    topic: str,
    payload: bytes,
    received_at: datetime,
) -> MappedEvent:
    if len(payload) > MAX_PAYLOAD:
        raise _Reject("too_large", f"{len(payload)} bytes (at most {MAX_PAYLOAD})")
    prefix = point.topic_prefix + "/"
    if not topic.startswith(prefix):
        raise _Reject("unknown_topic", f"{_short(topic)} is not below {prefix}")
    levels = topic[len(prefix) :].split("/")
    liveness = profile.liveness
    if liveness is not None and liveness.status_topic is not None:
        if topic_matches(liveness.status_topic, levels):
            return _status(point, profile, topic, payload, received_at)
    if liveness is not None and liveness.keepalive_topic is not None:
        if topic_matches(liveness.keepalive_topic, levels):
            return _keepalive(point, topic, payload, received_at)
    rules = [rule for rule in profile.rules if topic_matches(rule.levels, levels)]
    if not rules:
        raise _Reject("unknown_topic", f"{_short(topic)} matches no rule of {profile.id}")
    data = _parse_object(payload)
    for rule in rules:
        if rule.when is None or _holds(rule.when, data):
            return _event(point, profile, rule, topic, data, received_at)
    raise _Reject("no_rule_matched", f"{_short(topic)}: no rule's condition holds")


# ---- payload text ------------------------------------------------------------------------


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject("not_utf8", f"byte {exc.start} is not UTF-8") from None


def _parse(payload: bytes) -> Any:
    """JSON the journal can store again. orjson is strict where a journal row must
    be: no NaN, no infinities (``1e999``), no lone surrogates, nesting at most
    1,024 deep; it is also the intake's fastest step instead of its slowest."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        _decode(payload)  # a payload that is not UTF-8 says so
        raise _Reject("not_json", str(exc)[:120]) from None


def _parse_object(payload: bytes) -> dict[str, Any]:
    data = _parse(payload)
    if not isinstance(data, dict):
        raise _Reject("not_an_object", f"payload is a JSON {type(data).__name__}, not an object")
    return data


# ---- fields ------------------------------------------------------------------------------


def field_at(data: Any, path: tuple[str, ...]) -> Any:
    """The value at a dot path (a digit part indexes a list), or ``MISSING``."""
    for part in path:
        if isinstance(data, dict):
            data = data.get(part, MISSING)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return MISSING
        if data is MISSING:
            return MISSING
    return data


def _name(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _scalar_key(value: Any, path: tuple[str, ...]) -> str:
    if isinstance(value, _SCALARS):  # bool is an int
        return value_key(value)
    raise _Reject("bad_field_type", f"{_name(path)} is a JSON {type(value).__name__}")


def _holds(condition: Condition, data: dict[str, Any]) -> bool:
    value = field_at(data, condition.path)
    if not isinstance(value, _SCALARS):
        return False
    return value_key(value) == condition.equals


def _lookup(mapping: Mapping[str, str], key: str) -> str | None:
    return mapping.get(key, mapping.get(WILDCARD_KEY))


def _kind(rule: Rule, data: dict[str, Any]) -> str:
    if rule.kind is not None:
        return rule.kind
    assert rule.kind_path is not None  # a rule has kind or kind_field (validated)
    value = field_at(data, rule.kind_path)
    if value is MISSING or value is None:
        raise _Reject("missing_field", f"{_name(rule.kind_path)} (the event kind) is missing")
    key = _scalar_key(value, rule.kind_path)
    kind = _lookup(rule.kind_map, key)
    if kind is None:
        raise _Reject("unknown_value", f"{_name(rule.kind_path)} = {key[:40]!r} is not mapped")
    return kind


def _field(rule: Rule, name: str, value: Any, path: tuple[str, ...]) -> str | float:
    """One normalised field from the vendor's value (known not missing or null)."""
    if name in NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, _NUMBERS):
            raise _Reject("bad_field_type", f"{_name(path)} ({name}) is not a number")
        return float(value)
    if name not in ENUM_FIELDS:  # kept as given; numbers become their digits
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise _Reject("bad_field_type", f"{_name(path)} ({name}) is not text or a whole number")
    key = _scalar_key(value, path)
    mapping = rule.values.get(name, {})
    mapped = mapping.get(key)
    if mapped is None and key in ENUM_FIELDS[name]:
        mapped = key  # the vendor already speaks the normalised word
    if mapped is None:
        mapped = mapping.get(WILDCARD_KEY)
    if mapped is None:
        raise _Reject("unknown_value", f"{_name(path)} ({name}) = {key[:40]!r} is not mapped")
    return mapped


def _fields(rule: Rule, data: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = dict(rule.fixed)
    for name, path in rule.fields.items():
        value = field_at(data, path)
        if value is MISSING or value is None or value == "":
            if name in rule.required:
                raise _Reject("missing_field", f"{_name(path)} ({name}) is missing")
            continue
        fields[name] = _field(rule, name, value, path)
    return fields


def _sequence(profile: MqttProfile, data: dict[str, Any]) -> str | None:
    if profile.sequence is None:
        return None
    value = field_at(data, profile.sequence)
    if value is MISSING or value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return str(value)
    if isinstance(value, str) and _SEQUENCE.match(value):
        return value
    raise _Reject(
        "bad_field_type",
        f"{_name(profile.sequence)} (sequence) is not a whole number or a short printable text",
    )


def _device_time(spec: DeviceTime | None, data: dict[str, Any]) -> datetime | None:
    if spec is None:
        return None
    value = field_at(data, spec.path)
    if value is MISSING or value is None:
        return None
    where = _name(spec.path)
    moment = _to_datetime(spec, value, where)
    if not _EARLIEST <= moment < _LATEST:
        raise _Reject("bad_device_time", f"{where} = {moment.isoformat()} is outside 2000–2099")
    return moment


def _to_datetime(spec: DeviceTime, value: Any, where: str) -> datetime:
    if spec.format in ("unix_s", "unix_ms"):
        if isinstance(value, bool) or not isinstance(value, _NUMBERS):
            raise _Reject("bad_device_time", f"{where} is not a number ({spec.format})")
        seconds = value / 1000 if spec.format == "unix_ms" else value
        if not 946684800 <= seconds < 4102444800:  # 2000-01-01 .. 2100-01-01
            raise _Reject("bad_device_time", f"{where} = {value} is outside 2000–2099")
        return datetime.fromtimestamp(seconds, UTC)
    if not isinstance(value, str):
        raise _Reject("bad_device_time", f"{where} is not text ({spec.format})")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Reject("bad_device_time", f"{where} = {value[:40]!r} is not a date-time") from None
    if spec.format == "local":
        if moment.tzinfo is not None:
            raise _Reject("bad_device_time", f"{where} = {value[:40]!r} has an offset (local)")
        return moment.replace(tzinfo=spec.utc_offset)
    if moment.tzinfo is None:
        raise _Reject("bad_device_time", f"{where} = {value[:40]!r} has no UTC offset")
    return moment


# ---- events ------------------------------------------------------------------------------


def _short(topic: str) -> str:
    return repr(topic[:120])


def _event(
    point: AccessPointLike,
    profile: MqttProfile,
    rule: Rule,
    topic: str,
    data: dict[str, Any],
    received_at: datetime,
) -> MappedEvent:
    kind = _kind(rule, data)
    fields = _fields(rule, data)
    sequence = _sequence(profile, data)
    device_time = _device_time(profile.device_time, data)
    fields.setdefault("lot", point.lot)
    body = {**fields, "raw": data, "topic": topic}
    if sequence is None:
        event = Event(kind, point.id, body, device_time, received_at)
        return MappedEvent(event, stable_id=False)
    body["seq"] = sequence
    event = Event(kind, point.id, body, device_time, received_at, id=f"{point.id}#{sequence}")
    return MappedEvent(event, stable_id=True)


def _raw(payload: bytes) -> Any:
    """A liveness payload as kept in ``raw``: JSON if it is JSON, else its text."""
    text = _decode(payload)
    try:
        return _parse(payload)
    except _Reject:
        return text


def _status(
    point: AccessPointLike,
    profile: MqttProfile,
    topic: str,
    payload: bytes,
    received_at: datetime,
) -> MappedEvent:
    """A status or Last-Will message: online or offline (plain text or a JSON field)."""
    liveness = profile.liveness
    assert liveness is not None
    raw = _raw(payload)
    if liveness.status_path is not None:
        if not isinstance(raw, dict):
            raise _Reject("not_an_object", f"status on {_short(topic)} is not a JSON object")
        value = field_at(raw, liveness.status_path)
        if value is MISSING or value is None:
            raise _Reject("missing_field", f"{_name(liveness.status_path)} (status) is missing")
        key = _scalar_key(value, liveness.status_path)
    elif isinstance(raw, _SCALARS):
        key = value_key(raw).strip()
    else:
        raise _Reject("bad_field_type", f"status on {_short(topic)} is not a plain value")
    if key not in (liveness.online, liveness.offline):
        raise _Reject("unknown_value", f"status {key[:40]!r} is neither online nor offline")
    body = {"online": key == liveness.online, "lot": point.lot, "raw": raw, "topic": topic}
    return MappedEvent(Event("device.status", point.id, body, None, received_at), False)


def _keepalive(
    point: AccessPointLike, topic: str, payload: bytes, received_at: datetime
) -> MappedEvent:
    """A keep-alive: its arrival is the news; the payload is kept as it came."""
    body = {"lot": point.lot, "raw": _raw(payload), "topic": topic}
    return MappedEvent(Event("device.keepalive", point.id, body, None, received_at), False)
