"""The alarm engine inside the running service (``gateway run``): the API and
its roles, the live stream, kill -9 in the middle of alarms, incidents at the
reference central receiver, and a fire through a real broker releasing the
gates and raising the barriers."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.sim.gates import SimBarrier, SimGate
from gateway.sync.receiver import CentralReceiver
from tests.harness.broker import Broker, MqttTestClient, simulated_devices
from tests.harness.site import GatewayProcess, Site, wait_for, write_site

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"
SITE = "test-site"
TOKEN = "central-token-for-test-site"


def submit(site: Site, *events: dict[str, Any]) -> None:
    response = httpx.post(
        f"{site.url}/api/v1/events", json={"events": list(events)}, headers=site.headers("admin")
    )
    assert response.status_code == 200, response.text


def contact(device: str, number: int, meaning: str, abnormal: bool, where: str) -> dict[str, Any]:
    payload = {"input": number, "meaning": meaning, "where": where, "abnormal": abnormal}
    return {"kind": "io.input", "device": device, "payload": payload}


def board(site: Site, role: str = "guard") -> dict[str, Any]:
    response = httpx.get(f"{site.url}/api/v1/alarms", headers=site.headers(role))
    assert response.status_code == 200, response.text
    return dict(response.json())


def alarm(site: Site, alarm_id: str) -> dict[str, Any]:
    response = httpx.get(f"{site.url}/api/v1/alarms/{alarm_id}", headers=site.headers("guard"))
    assert response.status_code == 200, response.text
    return dict(response.json())


def post(site: Site, role: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(
        f"{site.url}/api/v1/alarms/{path}", json=body or {}, headers=site.headers(role), timeout=10
    )


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """The board without what moves with the clock (the countdown)."""
    text = json.dumps(body, sort_keys=True)
    data = json.loads(text)
    for section in ("alarms", "hidden"):
        for view in data[section]:
            view.pop("respond_in_s")
    return dict(data)


ELEVATOR = "elevator-alarm-relay:io-A/3"
SUMP = "sump-high-relay:io-A/5"
DOOR = "door-forced:gate-east"


def test_operators_work_the_alarms_and_kill_9_changes_nothing(tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        submit(
            site,
            contact("io-A", 3, "elevator_alarm", True, "3号楼2号电梯"),
            contact("io-A", 5, "sump_high", True, "地库集水坑"),
            {"kind": "door.forced", "device": "gate-east", "payload": {"door": 1}},
        )
        shown = wait_for(lambda: len(board(site)["alarms"]) == 3 and board(site), 5, "3 alarms")
        ids = [a["alarm_id"] for a in shown["alarms"]]
        assert ids[0] == ELEVATOR  # P1 first
        lift = alarm(site, ELEVATOR)
        assert lift["state"] == "unacknowledged" and lift["name"] == "电梯困人"
        assert lift["location"] == "3号楼2号电梯" and lift["respond_in_s"] > 0
        assert lift["steps"][0]["done_at"] is None

        assert post(site, "guard", f"{ELEVATOR}/acknowledge", {"note": "已派人"}).status_code == 200
        assert post(site, "guard", f"{ELEVATOR}/acknowledge").status_code == 409
        assert post(site, "guard", f"{ELEVATOR}/steps/1").status_code == 200
        assert (
            post(site, "guard", f"{ELEVATOR}/notes", {"text": "2人被困,情绪稳定"}).status_code
            == 200
        )
        shelve = {"reason": "泵维修中 pump under repair", "duration_s": 3600}
        assert post(site, "guard", f"{SUMP}/shelve", shelve).status_code == 403
        assert post(site, "supervisor", f"{SUMP}/shelve", shelve).status_code == 200
        too_long = {"reason": "all week", "duration_s": 7 * 86_400}
        assert post(site, "supervisor", f"{DOOR}/shelve", too_long).status_code == 409
        assert post(site, "guard", "nope:none/acknowledge").status_code == 404
        assert httpx.get(f"{site.url}/api/v1/alarms").status_code == 401

        lift = alarm(site, ELEVATOR)
        assert lift["state"] == "acknowledged" and lift["acked_by"] == "guard1"
        assert lift["steps"][0]["by"] == "guard1"
        assert [e["what"] for e in lift["timeline"]] == [
            "raised", "acknowledged", "step_done", "note",
        ]  # fmt: skip
        assert alarm(site, SUMP)["state"] == "shelved"
        assert alarm(site, DOOR)["state"] == "rtn_unacknowledged"
        audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("supervisor")).json()
        actions = {(a["action"], a["who"]) for a in audit["audit"]}
        assert {("alarm.acknowledge", "guard1"), ("alarm.shelve", "supervisor1")} <= actions
        transitions = httpx.get(
            f"{site.url}/api/v1/events", params={"kind": "alarm.acknowledged"},
            headers=site.headers("guard"),
        ).json()["events"]  # fmt: skip
        assert transitions[0]["payload"]["by"] == "guard1"

        before = comparable(board(site))
        gateway.signal(signal.SIGKILL)
        assert gateway.wait(10) == -signal.SIGKILL
    finally:
        gateway.close()
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        assert comparable(board(site)) == before
        # and the engine carries on: the contact clears, the acknowledged alarm is normal
        submit(site, contact("io-A", 3, "elevator_alarm", False, "3号楼2号电梯"))
        wait_for(lambda: alarm(site, ELEVATOR)["state"] == "normal", 5, "elevator back to normal")
    finally:
        gateway.close()


def test_the_live_stream_carries_each_committed_change(tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    gateway = GatewayProcess(site)
    got: list[tuple[str, dict[str, Any]]] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", f"{site.url}/api/v1/alarms/stream", headers=site.headers("guard"), timeout=10
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    got.append((kind, json.loads(line[6:])))
                    ready.set()
                    if kind == "alarm":
                        return

    try:
        gateway.wait_ready()
        assert httpx.get(f"{site.url}/api/v1/alarms/stream").status_code == 401
        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        assert ready.wait(5)
        submit(site, {"kind": "door.forced", "device": "gate-east", "payload": {"door": 1}})
        thread.join(5)
        kinds = [k for k, _ in got]
        assert kinds == ["snapshot", "alarm"]
        assert got[1][1]["alarm"]["alarm_id"] == DOOR
    finally:
        gateway.close()


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralReceiver]:
    with CentralReceiver(tmp_path / "central.db", sites={SITE: TOKEN}) as receiver:
        yield receiver


def test_an_incident_reaches_central_with_priority_and_revisions(
    tmp_path: Path, central: CentralReceiver
) -> None:
    site = write_site(
        tmp_path / "site",
        extra=(
            f'\n[sync]\nbase_url = "{central.base_url}"\ntoken = "{TOKEN}"\n'
            "backoff_initial_s = 0.1\nbackoff_max_s = 1.0\npull_interval_s = 1.0\n"
        ),
    )
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        submit(site, contact("io-A", 3, "elevator_alarm", True, "3号楼2号电梯"))
        incidents = wait_for(central.incidents, 10, "incident at central")
        [first] = incidents
        assert first["type"] == "elevator_entrapment" and first["priority"] == "P1"
        assert first["state"] == "open" and first["location"] == "3号楼2号电梯"
        wait_for(lambda: alarm(site, ELEVATOR).get("ticket_no"), 10, "ticket number shown")
        assert post(site, "guard", f"{ELEVATOR}/acknowledge").status_code == 200
        latest = wait_for(
            lambda: [i for i in central.incidents() if i["state"] == "acknowledged"], 10, "rev 2"
        )
        assert latest[0]["incident_id"] == first["incident_id"]
        assert latest[0]["revision"] > first["revision"]
        assert latest[0]["handler"] == "guard1"
        assert [t["what"] for t in latest[0]["timeline"]] == ["raised", "acknowledged"]
    finally:
        gateway.close()


def both_actions(site: Site) -> dict[str, Any] | None:
    """The confirmed fire once both linkage actions are in its timeline (None before:
    the second signal and the actions take a moment)."""
    response = httpx.get(
        f"{site.url}/api/v1/alarms/fire-confirmed:site", headers=site.headers("guard")
    )
    if response.status_code == 404:
        return None
    body = dict(response.json())
    actions = [e for e in body["timeline"] if e["what"] == "action"]
    return body if len(actions) == 2 else None


def fire_site(directory: Path, broker: Broker) -> Site:
    mqtt = (
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
    )
    points = [
        ("N-GATE-1", "turnstile", "generic-json-gate", "site/gates/N-GATE-1", ""),
        ("P-IN-1", "barrier", "lpr-camera-barrier", "site/barriers/P-IN-1", 'lot = "garage"\n'),
        ("SMOKE-1", "detector", "generic-json-detector", "site/fire/SMOKE-1", ""),
        ("SMOKE-2", "detector", "generic-json-detector", "site/fire/SMOKE-2", ""),
    ]
    text = mqtt + "".join(
        f'\n[[devices.access_points]]\nid = "{i}"\nkind = "{k}"\nprofile = "{p}"\n'
        f'topic_prefix = "{t}"\n{extra}'
        for i, k, p, t, extra in points
    )
    text += '\n[[parking.lots]]\nid = "garage"\nname = "地下车库"\nspaces = 546\n'
    site = write_site(directory, extra=text)
    for name in ("generic-json-gate", "lpr-camera-barrier", "generic-json-detector"):
        shutil.copy(PROFILES / f"{name}.toml", directory / "profiles")
    return site


def test_a_fire_confirmed_by_two_detectors_releases_gates_and_raises_barriers(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    site = fire_site(tmp_path / "site", mqtt_broker)
    devices = simulated_devices(
        mqtt_broker,
        gates=[SimGate("N-GATE-1", "site/gates/N-GATE-1")],
        barriers=[SimBarrier("P-IN-1", "site/barriers/P-IN-1", "garage", "in")],
    )
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        time.sleep(0.5)  # the gateway's SUBSCRIBE
        with MqttTestClient(mqtt_broker) as detectors:
            detectors.connect()
            alarm_body = {"type": "alarm", "zone": "B03-1F", "seq": 1}
            detectors.publish("site/fire/SMOKE-1/event", json.dumps(alarm_body))
            first = wait_for(
                lambda: [a for a in board(site)["alarms"] if a["type"] == "fire_alarm"], 5, "fire"
            )
            assert [a["alarm_id"] for a in first] == ["fire-detector-mqtt:SMOKE-1"]
            time.sleep(0.5)
            assert not [
                e for e in alarm(site, first[0]["alarm_id"])["timeline"] if e["what"] == "action"
            ]  # one signal: no linkage (GB 50116 §4.1.6)
            detectors.publish("site/fire/SMOKE-2/event", json.dumps(alarm_body))
            confirmed = wait_for(
                lambda: both_actions(site), 10, "the confirmed fire with both actions recorded"
            )
        notes = sorted(e["note"] for e in confirmed["timeline"] if e["what"] == "action")
        assert notes[0].startswith("raise_barriers P-IN-1: 设备已确认 confirmed hold_open")
        assert notes[1].startswith("release_gates N-GATE-1: 设备已确认 confirmed hold_open")
        assert confirmed["priority"] == "P1" and confirmed["state"] == "unacknowledged"
        audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("supervisor")).json()
        assert {a["action"] for a in audit["audit"]} >= {
            "alarm.release_gates",
            "alarm.raise_barriers",
        }
    finally:
        gateway.close()
        devices.stop()
