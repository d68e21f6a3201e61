"""Gates over MQTT in the running service: events in the journal, each once,
bad messages counted and survived (a real broker, ``gateway run``)."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

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
        headers=site.headers("guard"),
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
