"""MQTT access profiles and the mapping engine: shipped files, sample messages, bad input.

Each shipped profile maps realistic vendor messages to the right normalised
event; every rejection reason is produced by a matching bad input; bad
profiles give one clear line each; and no bytes or topic make the mapping
raise (hypothesis, a few thousand messages per profile).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapters.mqtt.mapping import (
    MAX_PAYLOAD,
    REJECT_REASONS,
    MappedEvent,
    Rejected,
    map_message,
)
from gateway.adapters.mqtt.profile import MqttProfile, load_mqtt_profile, load_mqtt_profiles
from gateway.errors import ConfigError
from gateway.profiles import load_profiles

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Point:
    """An access point as mapping sees it (gateway.config.AccessPoint has these)."""

    id: str
    kind: str
    topic_prefix: str
    lot: str | None = None


GATE = Point("GATE-N", "turnstile", "site/gate-n", None)
UHPPOTE = Point("DOOR-B1", "door", "uhppoted/gateway")
VTO = Point("VTO-B2", "door", "DahuaVTO")
CAMERA = Point("BARRIER-P1", "barrier", "device/SN0042", "underground")


@pytest.fixture(scope="module")
def profiles() -> dict[str, MqttProfile]:
    return load_mqtt_profiles(PROFILES)


def mapped(
    profile: MqttProfile, point: Point, topic: str, payload: Any, raw: bool = False
) -> MappedEvent:
    data = payload if raw else json.dumps(payload).encode()
    result = map_message(point, profile, f"{point.topic_prefix}/{topic}", data, NOW)
    assert isinstance(result, MappedEvent), result
    return result


def rejected(profile: MqttProfile, point: Point, topic: str, payload: bytes) -> Rejected:
    result = map_message(point, profile, topic, payload, NOW)
    assert isinstance(result, Rejected), result
    assert result.reason in REJECT_REASONS and result.detail
    return result


# ---- loading -----------------------------------------------------------------------------


def test_every_shipped_mqtt_profile_loads(profiles: dict[str, MqttProfile]) -> None:
    assert set(profiles) == {
        "generic-json-gate",
        "generic-json-detector",
        "generic-json-checkpoint-reader",
        "uhppoted-mqtt",
        "dahua-vto2mqtt",
        "lpr-camera-barrier",
    }
    for profile in profiles.values():
        assert profile.source.read_text(encoding="utf-8").startswith("#")
        assert "CHECK" in profile.source.read_text(encoding="utf-8")


def test_modbus_loader_skips_mqtt_profiles_in_the_same_folder() -> None:
    modbus = load_profiles(PROFILES)
    assert "eastron-sdm120" in modbus and "relay-8in8out" in modbus
    assert not {"generic-json-gate", "uhppoted-mqtt"} & set(modbus)


def test_mqtt_loader_skips_modbus_profiles(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(
        (PROFILES / "eastron-sdm120.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    assert load_mqtt_profiles(tmp_path) == {}


def test_subscriptions_cover_rules_liveness_and_replies(profiles: dict[str, MqttProfile]) -> None:
    topics = profiles["lpr-camera-barrier"].subscriptions("device/SN0042")
    assert "device/SN0042/message/up/ivs_result" in topics
    assert "device/SN0042/message/up/keep_alive" in topics
    assert "device/SN0042/message/down/gpio_out/reply" in topics
    assert len(topics) == len(set(topics))


# ---- generic JSON gate -------------------------------------------------------------------


def test_generic_granted_with_stable_id_and_device_time(profiles: dict[str, MqttProfile]) -> None:
    message = {"type": "granted", "card": "0012345678", "door": 1, "dir": 1, "seq": 4711}
    message["ts"] = "2026-11-23T16:00:00+08:00"
    result = mapped(profiles["generic-json-gate"], GATE, "event", message)
    event = result.event
    assert event.kind == "access.granted" and event.device == "GATE-N"
    assert event.id == "GATE-N#4711" and result.stable_id
    assert event.payload["card"] == "0012345678"  # kept as given: leading zeros matter
    assert event.payload["door"] == "1" and event.payload["direction"] == "in"
    assert event.payload["raw"] == message and event.payload["topic"] == "site/gate-n/event"
    assert event.payload["lot"] is None
    assert event.device_time == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    assert event.received_at == NOW
    event.as_row()  # storable


def test_generic_redelivery_gets_the_same_id(profiles: dict[str, MqttProfile]) -> None:
    message = {"type": "opened", "door": 2, "seq": 9}
    first = mapped(profiles["generic-json-gate"], GATE, "event", message)
    again = mapped(profiles["generic-json-gate"], GATE, "event", message)
    assert first.event.id == again.event.id == "GATE-N#9"


def test_generic_without_sequence_gets_a_fresh_id(profiles: dict[str, MqttProfile]) -> None:
    first = mapped(profiles["generic-json-gate"], GATE, "event", {"type": "closed"})
    again = mapped(profiles["generic-json-gate"], GATE, "event", {"type": "closed"})
    assert not first.stable_id and first.event.id != again.event.id


@pytest.mark.parametrize(
    ("message", "kind", "fields"),
    [
        ({"type": "denied", "card": 77, "reason": "time"}, "access.denied",
         {"card": "77", "reason": "outside_time_window"}),
        ({"type": "denied", "card": "9", "reason": "E42"}, "access.denied", {"reason": "other"}),
        ({"type": "forced", "door": 1}, "door.forced", {"door": "1"}),
        ({"type": "held_open", "door": 1}, "door.held_open", {}),
        ({"type": "duress", "card": "5"}, "access.duress", {"card": "5"}),
        ({"type": "remote_open", "door": 3}, "door.remote_open", {"door": "3"}),
        ({"type": "tailgating", "dir": "out"}, "access.tailgating", {"direction": "out"}),
    ],
)  # fmt: skip
def test_generic_event_kinds(
    profiles: dict[str, MqttProfile], message: dict[str, Any], kind: str, fields: dict[str, str]
) -> None:
    event = mapped(profiles["generic-json-gate"], GATE, "event", message).event
    assert event.kind == kind
    assert {key: event.payload[key] for key in fields} == fields


def test_generic_last_will_offline_and_online(profiles: dict[str, MqttProfile]) -> None:
    profile = profiles["generic-json-gate"]
    offline = mapped(profile, GATE, "status", b"offline", raw=True).event
    assert offline.kind == "device.status" and offline.payload["online"] is False
    assert offline.payload["raw"] == "offline"
    online = mapped(profile, GATE, "status", b'"online"', raw=True).event
    assert online.payload["online"] is True


# ---- uhppoted-mqtt -----------------------------------------------------------------------


def uhppoted(**event: Any) -> dict[str, Any]:
    base = {
        "device-id": 405419896,
        "event-id": 19,
        "event-type": 1,
        "access-granted": True,
        "door-id": 3,
        "direction": 1,
        "card-number": 8165538,
        "timestamp": "2026-11-23 16:00:00",
        "event-reason": 1,
    }
    return {"event": base | event}


def test_uhppoted_granted_in_local_time(profiles: dict[str, MqttProfile]) -> None:
    result = mapped(profiles["uhppoted-mqtt"], UHPPOTE, "events/live", uhppoted())
    event = result.event
    assert event.kind == "access.granted" and event.id == "DOOR-B1#19"
    assert event.payload["card"] == "8165538" and event.payload["direction"] == "in"
    assert event.device_time == datetime(2026, 11, 23, 16, 0, tzinfo=timezone(timedelta(hours=8)))
    assert event.device_time == NOW


def test_uhppoted_denied_with_reason(profiles: dict[str, MqttProfile]) -> None:
    message = uhppoted(**{"access-granted": False, "event-reason": 6, "direction": 2})
    event = mapped(profiles["uhppoted-mqtt"], UHPPOTE, "events", message).event
    assert event.kind == "access.denied"
    assert event.payload["reason"] == "no_permission" and event.payload["direction"] == "out"


@pytest.mark.parametrize(
    ("reason", "kind"),
    [(38, "door.forced"), (37, "door.held_open"), (44, "door.remote_open"), (24, "door.closed")],
)
def test_uhppoted_door_events_from_reason(
    profiles: dict[str, MqttProfile], reason: int, kind: str
) -> None:
    message = uhppoted(**{"event-type": 2, "event-reason": reason, "card-number": 0})
    assert mapped(profiles["uhppoted-mqtt"], UHPPOTE, "events", message).event.kind == kind


def test_uhppoted_status_field(profiles: dict[str, MqttProfile]) -> None:
    event = mapped(profiles["uhppoted-mqtt"], UHPPOTE, "system", {"status": "offline"}).event
    assert event.kind == "device.status" and event.payload["online"] is False


# ---- Dahua VTO2MQTT ----------------------------------------------------------------------


def vto(**data: Any) -> dict[str, Any]:
    base = {"CardNo": "A1B2C3D4", "Method": 1, "Status": 1, "Type": "Entry", "ReaderID": "1"}
    base |= {"RecNo": 691, "UTC": 1795420800}
    return {"Code": "AccessControl", "Action": "Pulse", "Data": base | data}


def test_vto_card_granted(profiles: dict[str, MqttProfile]) -> None:
    event = mapped(profiles["dahua-vto2mqtt"], VTO, "AccessControl/Event", vto()).event
    assert event.kind == "access.granted" and event.id == "VTO-B2#691"
    assert event.payload["card"] == "A1B2C3D4" and event.payload["method"] == "card"
    assert event.payload["direction"] == "in" and event.payload["door"] == "1"
    assert event.device_time == datetime.fromtimestamp(1795420800, UTC)


def test_vto_denied_and_remote_open(profiles: dict[str, MqttProfile]) -> None:
    profile = profiles["dahua-vto2mqtt"]
    denied = mapped(profile, VTO, "AccessControl/Event", vto(Status=0, ErrorCode=20)).event
    assert denied.kind == "access.denied" and denied.payload["reason"] == "card_expired"
    remote = mapped(profile, VTO, "AccessControl/Event", vto(Method=4, CardNo="")).event
    assert remote.kind == "door.remote_open" and remote.payload["method"] == "remote"
    assert "card" not in remote.payload


def test_vto_break_in_and_door_status(profiles: dict[str, MqttProfile]) -> None:
    profile = profiles["dahua-vto2mqtt"]
    forced = {"Code": "BreakIn", "Data": {"Index": 0}}
    assert mapped(profile, VTO, "BreakIn/Event", forced).event.kind == "door.forced"
    closed = {"Code": "DoorStatus", "Data": {"Status": "Close", "Index": 0}}
    assert mapped(profile, VTO, "DoorStatus/Event", closed).event.kind == "door.closed"


# ---- LPR camera with barrier -------------------------------------------------------------


def plate(**result: Any) -> dict[str, Any]:
    base = {"plate": "粤B12345", "plate_color": 1, "confidence": 97.5, "vehicle_type": 1}
    base |= {"direction": 1, "lane": 2, "open": True}
    return {"id": "R20261123-000812", "timestamp": 1795420800, "result": base | result}


def test_camera_vehicle_entry(profiles: dict[str, MqttProfile]) -> None:
    result = mapped(profiles["lpr-camera-barrier"], CAMERA, "message/up/ivs_result", plate())
    event = result.event
    assert event.kind == "vehicle.entry" and event.id == "BARRIER-P1#R20261123-000812"
    assert event.payload["plate"] == "粤B12345"  # not masked here
    assert event.payload["plate_colour"] == "blue"
    assert event.payload["vehicle_class"] == "monthly"
    assert event.payload["confidence"] == 97.5 and event.payload["lane"] == "2"
    assert event.payload["lot"] == "underground" and event.payload["direction"] == "in"


def test_camera_exit_and_denied_lot_full(profiles: dict[str, MqttProfile]) -> None:
    profile = profiles["lpr-camera-barrier"]
    exit_ = mapped(profile, CAMERA, "message/up/ivs_result", plate(direction=2)).event
    assert exit_.kind == "vehicle.exit" and exit_.payload["direction"] == "out"
    message = plate(open=False, reason=2, vehicle_type=0)
    denied = mapped(profile, CAMERA, "message/up/ivs_result", message).event
    assert denied.kind == "access.denied" and denied.payload["reason"] == "lot_full"
    assert denied.payload["vehicle_class"] == "temporary" and denied.payload["result"] == "denied"


def test_camera_barrier_fault_and_keepalive(profiles: dict[str, MqttProfile]) -> None:
    profile = profiles["lpr-camera-barrier"]
    fault = mapped(profile, CAMERA, "message/up/barrier", {"state": "STUCK", "mode": 0}).event
    assert fault.kind == "barrier.fault" and fault.payload["mode"] == "auto"
    opened = mapped(profile, CAMERA, "message/up/barrier", {"state": "OPEN", "mode": 2}).event
    assert opened.kind == "barrier.opened" and opened.payload["mode"] == "remote"
    alive = mapped(profile, CAMERA, "message/up/keep_alive", {"uptime": 5}).event
    assert alive.kind == "device.keepalive" and alive.payload["raw"] == {"uptime": 5}
    assert profile.liveness is not None and profile.liveness.offline_after_s == 35.0


def test_camera_loop_detector(profiles: dict[str, MqttProfile]) -> None:
    profile = profiles["lpr-camera-barrier"]
    on = mapped(profile, CAMERA, "message/up/gpio_in", {"gpio": {"port": 0, "value": 1}}).event
    off = mapped(profile, CAMERA, "message/up/gpio_in", {"gpio": {"port": 0, "value": 0}}).event
    assert (on.kind, off.kind) == ("barrier.loop_occupied", "barrier.loop_clear")
    other_input = json.dumps({"gpio": {"port": 3, "value": 1}}).encode()
    topic = f"{CAMERA.topic_prefix}/message/up/gpio_in"
    assert rejected(profile, CAMERA, topic, other_input).reason == "no_rule_matched"


def test_camera_commands_declared(profiles: dict[str, MqttProfile]) -> None:
    command = profiles["lpr-camera-barrier"].commands["raise_barrier"]
    body = json.loads(command.payload.substitute(request_id="c-1"))
    assert body["id"] == "c-1" and command.reply_match == ("id",)
    assert profiles["dahua-vto2mqtt"].commands["open_door"].ack_kind == "door.remote_open"


# ---- rejections --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("site/gate-n/event", b"{" + b" " * MAX_PAYLOAD + b"}", "too_large"),
        ("site/gate-n/event", b'{"type": "\xff"}', "not_utf8"),
        ("site/gate-n/event", b'{"type": ', "not_json"),
        ("site/gate-n/event", b'{"type": "granted", "seq": NaN}', "not_json"),
        ("site/gate-n/event", b'{"type": "granted", "seq": 1e999}', "not_json"),
        ("site/gate-n/event", b'{"card": "\\ud800"}', "not_json"),
        ("site/gate-n/event", b"[" * 40_000 + b"]" * 40_000, "too_large"),
        ("site/gate-n/event", b"[" * 5000 + b"]" * 5000, "not_json"),
        ("site/gate-n/event", b"[1, 2]", "not_an_object"),
        ("other/gate/event", b"{}", "unknown_topic"),
        ("site/gate-n/nonsense", b"{}", "unknown_topic"),
        ("site/gate-n/event", b'{"card": "1"}', "missing_field"),
        ("site/gate-n/event", b'{"type": "granted", "card": {"no": 1}}', "bad_field_type"),
        ("site/gate-n/event", b'{"type": "granted", "seq": -1}', "bad_field_type"),
        ("site/gate-n/event", b'{"type": "granted", "seq": 18446744073709551616}',
         "bad_field_type"),
        ("site/gate-n/event", b'{"type": "exploded"}', "unknown_value"),
        ("site/gate-n/event", b'{"type": "granted", "dir": 7}', "unknown_value"),
        ("site/gate-n/event", b'{"type": "granted", "ts": "yesterday"}', "bad_device_time"),
        ("site/gate-n/event", b'{"type": "granted", "ts": "2026-11-23T08:00:00"}',
         "bad_device_time"),
        ("site/gate-n/event", b'{"type": "granted", "ts": "1970-01-01T00:00:00Z"}',
         "bad_device_time"),
        ("site/gate-n/status", b"rebooting", "unknown_value"),
    ],
)  # fmt: skip
def test_generic_rejections(
    profiles: dict[str, MqttProfile], topic: str, payload: bytes, reason: str
) -> None:
    assert rejected(profiles["generic-json-gate"], GATE, topic, payload).reason == reason


def test_unmapped_values_and_numeric_time_rejections(profiles: dict[str, MqttProfile]) -> None:
    camera = profiles["lpr-camera-barrier"]
    topic = "device/SN0042/message/up/ivs_result"
    vto = profiles["dahua-vto2mqtt"]
    assert rejected(vto, VTO, "DahuaVTO/Unknown/Event", b"{}").reason == "unknown_topic"
    uhppote = profiles["uhppoted-mqtt"]
    message = json.dumps(uhppoted(**{"event-type": 2, "event-reason": 99})).encode()
    assert rejected(uhppote, UHPPOTE, "uhppoted/gateway/events", message).reason == (
        "unknown_value"
    )
    late = json.dumps(plate() | {"timestamp": 10**12}).encode()
    assert rejected(camera, CAMERA, topic, late).reason == "bad_device_time"
    text_time = json.dumps(plate() | {"timestamp": "now"}).encode()
    assert rejected(camera, CAMERA, topic, text_time).reason == "bad_device_time"


def test_no_rule_matched(tmp_path: Path) -> None:
    path = tmp_path / "only-when.toml"
    path.write_text(
        HEADER
        + '[[rules]]\ntopic = "e"\nwhen = { field = "a", equals = 1 }\nkind = "door.opened"\n',
        encoding="utf-8",
    )
    profile = load_mqtt_profile(path)
    assert rejected(profile, GATE, "site/gate-n/e", b'{"a": 2}').reason == "no_rule_matched"
    assert mapped(profile, GATE, "e", {"a": 1}).event.kind == "door.opened"


# ---- bad profiles ------------------------------------------------------------------------

HEADER = '[profile]\nname = "Test"\nkind = "mqtt_access"\n\n'
RULE = '[[rules]]\ntopic = "event"\nkind = "door.opened"\n'


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mqtt_profile(path)
    return [line.replace(f"{path}: ", "") for line in caught.value.problems]


def test_bad_profile_unknown_key(tmp_path: Path) -> None:
    assert problems(tmp_path, HEADER + RULE + "colour = 1\n") == [
        "rules[0].colour: unknown key (see config/profiles/README.md, MQTT access profiles)"
    ]


def test_bad_profile_unknown_kind(tmp_path: Path) -> None:
    lines = problems(tmp_path, HEADER + RULE.replace("door.opened", "door.exploded"))
    assert len(lines) == 1
    assert lines[0].startswith('rules[0].kind: "door.exploded" is not a normalised event kind (')


def test_bad_profile_bad_wildcard(tmp_path: Path) -> None:
    lines = problems(tmp_path, HEADER + RULE.replace('"event"', '"ev+ent/#/x"'))
    assert lines == [
        'rules[0].topic: "ev+ent/#/x" uses a wildcard inside a level '
        "('+' and '#' must be a whole level)"
    ]
    lines = problems(tmp_path, HEADER + RULE.replace('"event"', '"#/x"'))
    assert lines == [
        "rules[0].topic: \"#/x\" has '#' before the last level ('#' only ends a topic filter)"
    ]


def test_bad_profile_value_map_to_non_normalised_value(tmp_path: Path) -> None:
    text = HEADER + '[values.direction]\n"1" = "inward"\n\n' + RULE
    assert problems(tmp_path, text) == ['values.direction."1": "inward" is not a normalised '
                                        "direction (in, out)"]  # fmt: skip
    text = HEADER + RULE + '[rules.values.card]\n"1" = "x"\n'
    assert problems(tmp_path, text) == [
        "rules[0].values.card: card is kept as given and takes no value map"
    ]


def test_bad_profile_kind_and_liveness_and_commands(tmp_path: Path) -> None:
    text = HEADER + '[[rules]]\ntopic = "e"\n'
    assert problems(tmp_path, text) == [
        "rules[0]: needs either kind (fixed) or kind_field with kind_map"
    ]
    text = HEADER + RULE + '[liveness]\nstatus_topic = "status"\n'
    assert problems(tmp_path, text) == ["liveness: status_topic, online and offline go together"]
    text = HEADER + RULE + '[commands.open_door]\ntopic = "open"\npayload = "${card}"\n'
    lines = problems(tmp_path, text)
    assert lines[0].startswith('commands.open_door.payload: "${card}" uses ${card}, which is not')
    text = (
        HEADER
        + RULE
        + '[commands.explode]\ntopic = "x"\npayload = "{}"\nack_kind = "door.opened"\n'
    )
    assert problems(tmp_path, text)[0].startswith(
        'commands.explode.[key]: "explode" is not a command'
    )


def test_bad_profile_field_name_and_local_time(tmp_path: Path) -> None:
    text = HEADER + RULE + 'fields = { badge = "b" }\n'
    assert problems(tmp_path, text)[0].startswith('rules[0].fields.badge.[key]: "badge" is not')
    text = HEADER + RULE + '[device_time]\nfield = "t"\nformat = "local"\n'
    assert problems(tmp_path, text) == [
        'device_time: utc_offset is needed with format = "local", and only then'
    ]


def test_bad_profiles_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(HEADER + RULE + "x = 1\n", encoding="utf-8")
    (tmp_path / "b.toml").write_text(HEADER + RULE.replace("door.", "gate."), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mqtt_profiles(tmp_path)
    assert [line.split(": ")[0] for line in caught.value.problems] == [
        str(tmp_path / "a.toml"),
        str(tmp_path / "b.toml"),
    ]


# ---- never raises ------------------------------------------------------------------------


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["type", "card", "seq", "ts", "event", "Data", "result", "state", "status", "id"]
            )
            | st.text(max_size=8),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)
SAMPLES = {
    "generic-json-gate": (GATE, json.dumps({"type": "granted", "seq": 1}).encode()),
    "uhppoted-mqtt": (UHPPOTE, json.dumps(uhppoted()).encode()),
    "dahua-vto2mqtt": (VTO, json.dumps(vto()).encode()),
    "lpr-camera-barrier": (CAMERA, json.dumps(plate()).encode()),
}


def _mutated(sample: bytes) -> st.SearchStrategy[bytes]:
    """A real message with a few bytes changed."""
    return st.lists(
        st.tuples(st.integers(0, len(sample) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ).map(lambda edits: _apply(sample, edits))


def _apply(sample: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(sample)
    for index, value in edits:
        data[index] = value
    return bytes(data)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_mapping_never_raises(name: str, profiles: dict[str, MqttProfile]) -> None:
    """Random bytes, random JSON and mutated real messages on every topic of each profile."""
    profile = profiles[name]
    point, sample = SAMPLES[name]
    topics = [
        t.replace("+", "x").replace("#", "y") for t in profile.subscriptions(point.topic_prefix)
    ]
    payloads = (
        st.binary(max_size=256) | _JSON.map(lambda v: json.dumps(v).encode()) | _mutated(sample)
    )

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        topic=st.sampled_from([*topics, point.topic_prefix, ""]) | st.text(max_size=30),
        payload=payloads,
    )
    def check(topic: str, payload: bytes) -> None:
        result = map_message(point, profile, topic, payload, NOW)
        if isinstance(result, MappedEvent):
            result.event.as_row()  # whatever is accepted can be stored
        else:
            assert result.reason in REJECT_REASONS

    check()
