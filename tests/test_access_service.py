"""Gates over MQTT in the running service: events in the journal, each once,
bad messages counted and survived (a real broker, ``gateway run``)."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.harness.broker import Broker, MqttTestClient
from tests.harness.site import GatewayProcess, Site, write_site

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"


def gate_site(directory: Path, broker: Broker) -> Site:
    site = write_site(
        directory,
        extra=(
            f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'username = "{broker.username}"\npassword = "{broker.password}"\n'
            '\n[[devices.access_points]]\nid = "N-GATE-1"\nkind = "turnstile"\n'
            'profile = "generic-json-gate"\ntopic_prefix = "site/gates/N-GATE-1"\n'
        ),
    )
    shutil.copy(PROFILES / "generic-json-gate.toml", directory / "profiles")
    return site


def access_events(site: Site) -> list[dict]:
    response = httpx.get(
        f"{site.url}/api/v1/events",
        params={"device": "N-GATE-1", "limit": 500},
        headers=site.headers("supervisor"),  # cards in full
    )
    assert response.status_code == 200, response.text
    return [e for e in response.json()["events"] if e["kind"].startswith(("access.", "door."))]


def test_gate_events_are_journalled_once_and_garbage_is_survived(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    site = gate_site(tmp_path / "site", mqtt_broker)
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        time.sleep(0.5)  # the gateway's SUBSCRIBE
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            topic = "site/gates/N-GATE-1/event"
            granted = {
                "type": "granted",
                "card": "12345678",
                "door": 1,
                "dir": 1,
                "seq": 41,
                "ts": "2026-11-23T08:00:00+08:00",
            }
            device.publish(topic, json.dumps(granted))
            device.publish(topic, json.dumps(granted))  # a QoS 1 redelivery: same seq
            for garbage in (
                b"\xff\xfe",
                b"{not json",
                b"[1,2]",
                b"x" * 100_000,
                json.dumps({"type": "granted", "seq": 42, "card": {"a": 1}}),
            ):
                device.publish(topic, garbage)
            device.publish("site/gates/N-GATE-1/unknown", b"{}")
            denied = {
                "type": "denied",
                "card": "999",
                "door": 1,
                "dir": 2,
                "reason": "expired",
                "seq": 43,
                "ts": "2026-11-23T08:01:00+08:00",
            }
            device.publish(topic, json.dumps(denied))

        deadline = time.monotonic() + 10
        while len(access_events(site)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        events = access_events(site)
        assert sorted(e["kind"] for e in events) == ["access.denied", "access.granted"]
        by_kind = {e["kind"]: e for e in events}
        assert by_kind["access.granted"]["payload"]["card"] == "12345678"
        assert by_kind["access.granted"]["payload"]["direction"] == "in"
        device_time = datetime.fromisoformat(by_kind["access.granted"]["device_time"])
        assert device_time == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # the device's clock
        assert by_kind["access.denied"]["payload"]["reason"] == "card_expired"
        assert by_kind["access.denied"]["payload"]["raw"] == denied
        assert httpx.get(f"{site.url}/healthz").status_code == 200
        log = gateway.log()
        assert "reason=not_utf8" in log and "reason=too_large" in log
    finally:
        gateway.close()


def device_state(site: Site, device: str) -> str | None:
    body = httpx.get(f"{site.url}/api/v1/devices", headers=site.headers("guard")).json()
    return next((d["state"] for d in body["devices"] if d["device"] == device), None)


def wait_state(site: Site, device: str, state: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while device_state(site, device) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"{device} not {state} within {within_s} s")
        time.sleep(0.1)


def test_an_access_point_goes_offline_on_its_last_will_and_back_on_its_next_message(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    site = gate_site(tmp_path / "site", mqtt_broker)
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        time.sleep(0.5)
        assert device_state(site, "N-GATE-1") == "unknown"
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            device.publish("site/gates/N-GATE-1/status", b"online", retain=True)
            wait_state(site, "N-GATE-1", "online")
            device.publish("site/gates/N-GATE-1/status", b"offline", retain=True)  # its Will
            wait_state(site, "N-GATE-1", "offline")
            opened = {"type": "opened", "door": 1, "seq": 7, "ts": "2026-11-23T08:00:00+08:00"}
            device.publish("site/gates/N-GATE-1/event", json.dumps(opened))
            wait_state(site, "N-GATE-1", "online")
        events = httpx.get(
            f"{site.url}/api/v1/events",
            params={"kind": "device.health", "device": "N-GATE-1"},
            headers=site.headers("guard"),
        ).json()["events"]
        assert sorted(e["payload"]["state"] for e in events) == ["offline", "online", "online"]
    finally:
        gateway.close()


def test_a_camera_whose_keep_alives_stop_goes_offline(tmp_path: Path, mqtt_broker: Broker) -> None:
    directory = tmp_path / "site"
    site = write_site(
        directory,
        extra=(
            f'\n[mqtt]\nhost = "{mqtt_broker.host}"\nport = {mqtt_broker.port}\n'
            f'username = "{mqtt_broker.username}"\npassword = "{mqtt_broker.password}"\n'
            '\n[[devices.access_points]]\nid = "CAM-IN"\nkind = "barrier"\n'
            'profile = "lpr-camera-barrier"\ntopic_prefix = "device/SN1"\nlot = "SURFACE"\n'
        ),
    )
    text = (PROFILES / "lpr-camera-barrier.toml").read_text(encoding="utf-8")
    fast = text.replace("offline_after_s = 35.0", "offline_after_s = 1.5")
    assert fast != text
    (directory / "profiles" / "lpr-camera-barrier.toml").write_text(fast, encoding="utf-8")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        time.sleep(0.5)
        with MqttTestClient(mqtt_broker) as camera:
            camera.connect()
            camera.publish("device/SN1/message/up/keep_alive", b'{"sn": "SN1"}')
            wait_state(site, "CAM-IN", "online")
            wait_state(site, "CAM-IN", "offline", within_s=6)  # silence, no Will
            camera.publish("device/SN1/message/up/keep_alive", b'{"sn": "SN1"}')
            wait_state(site, "CAM-IN", "online")
        assert "no keep-alive for" in gateway.log()
    finally:
        gateway.close()


def command_site(directory: Path, broker: Broker) -> Site:
    site = gate_site(directory, broker)
    profile = directory / "profiles" / "generic-json-gate.toml"
    text = profile.read_text(encoding="utf-8")
    fast = text.replace("timeout_s = 5.0", "timeout_s = 1.0")
    assert fast != text
    profile.write_text(fast, encoding="utf-8")
    return site


def answer_commands(device: MqttTestClient, ok: bool, stop: threading.Event) -> None:
    """The simulated controller: answers each command on its reply topic."""
    while not stop.is_set():
        try:
            message = device.messages.get(timeout=0.1)
        except queue.Empty:
            continue
        request = json.loads(message.payload)
        reply = {"id": request["id"], "ok": ok}
        device.publish("site/gates/N-GATE-1/command/reply", json.dumps(reply))


def open_door(site: Site, role: str) -> httpx.Response:
    return httpx.post(
        f"{site.url}/api/v1/access/N-GATE-1/commands",
        json={"action": "open_door", "reason": "访客证件核验后放行", "door": 1},
        headers=site.headers(role),
        timeout=10,
    )


@pytest.mark.parametrize("answer", ["ok", "refused", "silent"])
def test_a_remote_open_is_done_only_when_the_controller_confirms(
    tmp_path: Path, mqtt_broker: Broker, answer: str
) -> None:
    site = command_site(tmp_path / "site", mqtt_broker)
    gateway = GatewayProcess(site)
    stop = threading.Event()
    try:
        gateway.wait_ready()
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            device.subscribe("site/gates/N-GATE-1/command/open")
            responder = threading.Thread(
                target=answer_commands, args=(device, answer == "ok", stop), daemon=True
            )
            if answer != "silent":
                responder.start()
            time.sleep(0.5)
            assert open_door(site, "guard").status_code == 403
            started = time.monotonic()
            response = open_door(site, "supervisor")
            stop.set()
            if responder.is_alive():
                responder.join(5)
        if answer == "ok":
            assert response.status_code == 200, response.text
            assert response.json()["done"] is True
        else:
            assert response.status_code == 502
            expected = "refused" if answer == "refused" else "no answer from the device in 1 s"
            assert expected in response.json()["detail"]
            assert time.monotonic() - started < 5
        events = httpx.get(
            f"{site.url}/api/v1/events",
            params={"kind": "access.command"},
            headers=site.headers("guard"),
        ).json()["events"]
        [event] = events
        assert event["payload"]["done"] is (answer == "ok")
        assert event["payload"]["by"] == "supervisor1"
        audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("supervisor")).json()
        [entry] = [a for a in audit["audit"] if a["action"] == "access.open_door"]
        assert entry["reason"] == "访客证件核验后放行" and entry["target"] == "N-GATE-1"
    finally:
        stop.set()
        gateway.close()
