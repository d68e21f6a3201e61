"""The fault suite's core: kill -9 over and over under mixed load.

A real gateway process polls simulated Modbus meters, takes QoS 1 gate events from
a controller on a real broker and patrol scans from a phone through the API, and
sends its readings to the reference central receiver. It is killed with SIGKILL
five times at random moments and restarted. Central is unreachable (connections
refused) through the first kills, so the readings' backlog is built up, killed and
restarted before any of it is delivered. Afterwards:

- every gate event the broker acknowledged to the controller is in the journal,
  once (the gateway acknowledges to the broker only after its commit);
- every scan the API acknowledged (200) is in the journal, once; scans sent while
  the gateway was down were resent with the same id, as the phone page does;
- every meter reading in the journal is at central, once; none is stored twice
  although some were sent again after a kill;
- the journal passes its integrity check.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth import hash_token
from gateway.profiles import load_profiles
from gateway.sim.broker import Broker
from gateway.sim.meters import MeterFleet, SiteLayout, reference_slice, shipped_profiles_dir
from gateway.sim.ports import free_tcp_port
from gateway.sync.receiver import CentralReceiver
from tests.harness.broker import MqttTestClient
from tests.harness.patrol import PATROL
from tests.harness.site import ROLES, GatewayProcess, Site, wait_for

pytestmark = pytest.mark.slow
SITE = "yiyuan-sim"
TOKEN = "central-token-for-the-kill-test"
GATE = "N-GATE-1"
KILLS = 5
CENTRAL_DOWN_S = 8.0  # shorter than the kill phase: it ends between kills


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralReceiver]:
    with CentralReceiver(tmp_path / "central.db", sites={SITE: TOKEN}) as receiver:
        yield receiver


@pytest.fixture
def fleet() -> Iterator[tuple[MeterFleet, SiteLayout]]:
    """Tower B01 of the reference site (108 meters and the site mains), polled every few s."""
    layout = reference_slice(1, household_poll_s=5.0, main_poll_s=2.0)
    fleet = MeterFleet.for_layout(layout, load_profiles(shipped_profiles_dir()))
    fleet.start()
    try:
        yield fleet, layout
    finally:
        fleet.stop()


def mixed_site(
    directory: Path,
    fleet: tuple[MeterFleet, SiteLayout],
    broker: Broker,
    central: CentralReceiver,
) -> Site:
    directory.mkdir(parents=True)
    port = free_tcp_port()
    tokens = {role: f"kill-test-{role}-{os.urandom(4).hex()}" for role in ROLES}
    users = "".join(
        f'\n[[users]]\nname = "{role}1"\nrole = "{role}"\ntoken_sha256 = "{hash_token(t)}"\n'
        for role, t in tokens.items()
    )
    extra = (
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n\n[service]\nheartbeat_s = 1\n'
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
        f'\n[[devices.access_points]]\nid = "{GATE}"\nkind = "turnstile"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "site/gates/{GATE}"\n'
        f'\n[sync]\nbase_url = "{central.base_url}"\ntoken = "{TOKEN}"\n'
        "backoff_initial_s = 0.1\nbackoff_max_s = 1.0\nread_timeout_s = 2.0\n" + PATROL + users
    )
    meters, layout = fleet
    text = layout.site_toml(meters.ports(), profiles_dir=shipped_profiles_dir(), extra=extra)
    path = directory / "site.toml"
    path.write_text(text, encoding="utf-8")
    return Site(path, port, tokens, directory / "journal.db")


class GateController:
    """Publishes QoS 1 gate events (sequence-numbered) until stopped; keeps every
    sequence number the broker acknowledged."""

    def __init__(self, broker: Broker) -> None:
        self.client = MqttTestClient(broker)
        self.client.connect()
        self.acknowledged: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gate-controller")

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            event = {"type": "granted", "door": 1, "card": f"{seq:08d}", "seq": seq,
                     "ts": "2026-11-23T08:00:00+08:00"}  # fmt: skip
            self.client.publish(f"site/gates/{GATE}/event", json.dumps(event))
            self.acknowledged.append(seq)
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.client.close()


class Phone:
    """A guard's phone posting scans; one not acknowledged is resent with its id."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.acknowledged: set[str] = set()
        self.queue: list[dict[str, object]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="phone")

    def _scan(self) -> dict[str, object]:
        now = datetime.now(UTC)
        return {"scan_id": uuid.uuid4().hex, "method": "code", "code": "A101",
                "scanned_at": (now - timedelta(seconds=1)).isoformat(),
                "sent_at": now.isoformat()}  # fmt: skip

    def _run(self) -> None:
        with httpx.Client(base_url=self.site.url, headers=self.site.headers("guard")) as client:
            while not self.stop.is_set() or self.queue:
                if not self.stop.is_set():
                    self.queue.append(self._scan())
                for scan in list(self.queue):
                    try:
                        answer = client.post("/api/v1/patrol/scans", json=scan, timeout=5)
                    except httpx.TransportError:
                        break  # the gateway is down: keep the queue, try again
                    if answer.status_code == 200:
                        self.acknowledged.add(str(scan["scan_id"]))
                        self.queue.remove(scan)
                time.sleep(0.2)


def _journal(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _payloads(site: Site, kind: str) -> list[dict[str, Any]]:
    rows = _journal(site.journal, f"SELECT payload FROM events WHERE kind = '{kind}'")
    return [json.loads(str(row[0])) for row in rows]


def _journalled_readings(site: Site) -> set[str]:
    return {r["reading_id"] for p in _payloads(site, "meter.reading") for r in p["readings"]}


def _backlog(site: Site) -> int:
    body = httpx.get(f"{site.url}/api/v1/sync", headers=site.headers("guard"), timeout=5).json()
    return int(body["streams"]["meter-readings"]["backlog"])


def test_kill_9_cycles_under_mixed_load_lose_nothing_and_duplicate_nothing(
    tmp_path: Path,
    mqtt_broker: Broker,
    central: CentralReceiver,
    fleet: tuple[MeterFleet, SiteLayout],
) -> None:
    site = mixed_site(tmp_path / "site", fleet, mqtt_broker, central)
    rng = random.Random(9)
    gateway = GatewayProcess(site)
    gateway.wait_ready()
    time.sleep(1.0)  # the MQTT subscription is made
    central.down_for(CENTRAL_DOWN_S)
    down_since = time.monotonic()
    controller = GateController(mqtt_broker)
    controller.thread.start()
    phone = Phone(site)
    phone.thread.start()
    backlog_while_down = 0
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.5, 4.0))
            gateway.signal(signal.SIGKILL)
            gateway.wait(10)
            gateway.close()
            time.sleep(rng.uniform(0.1, 1.0))  # devices and the phone keep going meanwhile
            gateway = GatewayProcess(site)
            gateway.wait_ready(30)
            if central.is_down:
                backlog_while_down = max(backlog_while_down, _backlog(site))
        assert time.monotonic() - down_since > CENTRAL_DOWN_S, "central came back during kills"
        assert backlog_while_down > 100, "a backlog built up while central was down"
        time.sleep(2.0)
        controller.close()
        phone.stop.set()
        phone.thread.join(30)
        assert not phone.queue, "every scan was acknowledged in the end"
        wait_for(
            lambda: len(_payloads(site, "access.granted")) >= len(controller.acknowledged),
            30,
            "every acknowledged gate event journalled",
        )
        fleet[0].stop()  # no new readings: let the outbox drain
        wait_for(
            lambda: _journalled_readings(site) <= {r["reading_id"] for r in central.readings(SITE)},
            60,
            "every journalled reading at central",
        )
        wait_for(lambda: _backlog(site) == 0, 30, "the readings' backlog drained")
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
    finally:
        controller.stop.set()
        phone.stop.set()
        gateway.close()

    cards = [p["card"] for p in _payloads(site, "access.granted")]
    assert len(cards) == len(set(cards)), "a gate event stored twice"
    assert {f"{s:08d}" for s in controller.acknowledged} <= set(cards), "a gate event lost"
    scans = [p["scan_id"] for p in _payloads(site, "patrol.scan")]
    assert len(scans) == len(set(scans)), "a scan stored twice"
    assert phone.acknowledged <= set(scans), "an acknowledged scan lost"
    journalled = _journalled_readings(site)
    ids = [r["reading_id"] for r in central.readings(SITE)]
    assert len(ids) == len(set(ids)), "a reading stored twice at central"
    assert set(ids) == journalled, "every journalled reading at central"
    assert len(ids) > 100, "readings flowed"
    assert _journal(site.journal, "PRAGMA integrity_check")[0][0] == "ok"
