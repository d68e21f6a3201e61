"""A simulated day of gate and barrier traffic through a real broker: the
gateway's occupancy matches the simulator's own count, every gate event is
journalled once, a stuck barrier refuses the remote raise."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from gateway.sim.gates import GateTraffic, SimBarrier, SimGate
from tests.harness.broker import Broker
from tests.harness.site import GatewayProcess, Site, write_site

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"
GATES = [SimGate("N-GATE-P1", "site/gates/N-GATE-P1"), SimGate("S-GATE-P1", "site/gates/S-GATE-P1")]
BARRIERS = [
    SimBarrier("N-BAR-IN", "device/N-BAR-IN", "SURFACE", "in"),
    SimBarrier("N-BAR-OUT", "device/N-BAR-OUT", "SURFACE", "out"),
    SimBarrier("G-BAR-IN", "device/G-BAR-IN", "GARAGE", "in"),
    SimBarrier("G-BAR-OUT", "device/G-BAR-OUT", "GARAGE", "out"),
]


def traffic_site(directory: Path, broker: Broker) -> Site:
    points = "".join(
        f'\n[[devices.access_points]]\nid = "{g.id}"\nkind = "turnstile"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "{g.topic_prefix}"\n'
        for g in GATES
    ) + "".join(
        f'\n[[devices.access_points]]\nid = "{b.id}"\nkind = "barrier"\n'
        f'profile = "lpr-camera-barrier"\ntopic_prefix = "{b.topic_prefix}"\nlot = "{b.lot}"\n'
        for b in BARRIERS
    )
    lots = (
        '\n[[parking.lots]]\nid = "SURFACE"\nname = "地面停车场"\nspaces = 125\n'
        "classes = { temporary = 40, monthly = 80, vip = 5 }\n"
        '\n[[parking.lots]]\nid = "GARAGE"\nname = "地下停车场"\nspaces = 546\n'
        "classes = { temporary = 46, monthly = 490, vip = 10 }\n"
    )
    site = write_site(
        directory,
        extra=(
            f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'username = "{broker.username}"\npassword = "{broker.password}"\n' + points + lots
        ),
    )
    for name in ("generic-json-gate", "lpr-camera-barrier"):
        shutil.copy(PROFILES / f"{name}.toml", directory / "profiles")
    return site


def test_a_day_of_traffic_occupancy_matches_the_simulators_count(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    site = traffic_site(tmp_path / "site", mqtt_broker)
    gateway = GatewayProcess(site)
    traffic = GateTraffic(
        mqtt_broker.host,
        mqtt_broker.port,
        mqtt_broker.username,
        mqtt_broker.password,
        GATES,
        BARRIERS,
        seed=11,
    )
    try:
        gateway.wait_ready()
        time.sleep(0.5)
        traffic.start()
        day = datetime(2026, 11, 23, tzinfo=ZoneInfo("Asia/Shanghai"))
        for minute in range(24 * 60):
            traffic.minute(day + timedelta(minutes=minute), people_per_hour=120, cars_per_hour=90)
        traffic.flush()
        published = traffic.published

        def journalled() -> int:
            response = httpx.get(f"{site.url}/metrics", headers=site.headers("admin"))
            for line in response.text.splitlines():
                if line.startswith("gateway_events_ingested_total"):
                    return int(float(line.split()[-1]))
            return 0

        deadline = time.monotonic() + 30
        while journalled() < published and time.monotonic() < deadline:
            time.sleep(0.2)
        lots = httpx.get(f"{site.url}/api/v1/parking", headers=site.headers("guard")).json()
        counted = {
            (lot["lot"], vehicle_class): figures["cars"]
            for lot in lots["lots"]
            for vehicle_class, figures in lot["classes"].items()
        }
        truth = {key: n for key, n in traffic.cars.items()}
        assert traffic.movements > 300 and sum(truth.values()) > 20  # a day worth testing
        assert {k: v for k, v in counted.items() if v} == {k: v for k, v in truth.items() if v}
        anomalies = httpx.get(
            f"{site.url}/api/v1/events",
            params={"kind": "parking.anomaly"},
            headers=site.headers("guard"),
        ).json()["events"]
        assert anomalies == []

        # The garage's entry arm jams: the fault is an event, a remote raise is refused.
        traffic.barrier_stuck(BARRIERS[2])
        raise_it = httpx.post(
            f"{site.url}/api/v1/access/G-BAR-IN/commands",
            json={"action": "raise_barrier", "reason": "救护车进场"},
            headers=site.headers("supervisor"),
            timeout=10,
        )
        assert raise_it.status_code == 502 and "refused" in raise_it.json()["detail"]
        faults = httpx.get(
            f"{site.url}/api/v1/events",
            params={"kind": "barrier.fault", "device": "G-BAR-IN"},
            headers=site.headers("guard"),
        ).json()["events"]
        assert len(faults) == 1
    finally:
        traffic.stop()
        gateway.close()
