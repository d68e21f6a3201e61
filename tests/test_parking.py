"""Car-park occupancy from barrier events, on a real journal and through the
running service: nested lots, per-class full, redeliveries counted once,
impossible counts flagged, a guard's recount audited."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx

from gateway.config import ParkingLot
from gateway.events import Event
from gateway.journal.store import Journal
from gateway.parking import occupancy, record_vehicle_events
from tests.harness.broker import Broker, MqttTestClient
from tests.harness.site import GatewayProcess, write_site

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"
SURFACE = ParkingLot(id="SURFACE", name="地面", spaces=4, classes={"temporary": 1, "monthly": 3})
UNDER = ParkingLot(
    id="UNDER", name="地下", inside="SURFACE", spaces=3, classes={"temporary": 1, "monthly": 2}
)
LOTS = [SURFACE, UNDER]


def car(kind: str, lot: str, vehicle_class: str, n: int) -> Event:
    return Event(
        f"vehicle.{kind}",
        f"{lot}-BAR",
        {"lot": lot, "vehicle_class": vehicle_class, "plate": f"粤B{n:05d}"},
        id=f"{lot}-BAR#{kind}-{n}",
    )


def run(path: Path, events: list[Event]) -> tuple[list[dict], list[dict]]:
    async def main() -> tuple[list[dict], list[dict]]:
        journal = await Journal.open(path)
        try:
            for event in events:  # one barrier message at a time, as they come
                await journal.write(lambda c, e=event: record_vehicle_events(c, [e], LOTS))
            lots = await journal.query(lambda c: occupancy(c, LOTS))
            flags = await journal.query(
                lambda c: [
                    json.loads(p)
                    for (p,) in c.execute(
                        "SELECT payload FROM events WHERE kind = 'parking.anomaly' ORDER BY seq"
                    )
                ]
            )
            return lots, flags
        finally:
            await journal.close()

    return asyncio.run(main())


def test_nested_lots_count_each_car_where_it_parks(tmp_path: Path) -> None:
    events = [
        car("entry", "SURFACE", "monthly", 1),
        car("entry", "SURFACE", "monthly", 2),
        car("entry", "SURFACE", "temporary", 3),
        car("entry", "UNDER", "monthly", 1),  # car 1 goes down the ramp
        car("entry", "UNDER", "monthly", 1),  # the same message again (QoS 1)
    ]
    lots, flags = run(tmp_path / "j.db", events)
    surface, under = lots
    assert (surface["cars"], under["cars"]) == (2, 1)
    assert surface["classes"]["temporary"] == {"cars": 1, "spaces": 1, "free": 0, "full": True}
    assert surface["classes"]["monthly"]["full"] is False  # full for visitors only
    assert under["classes"]["monthly"] == {"cars": 1, "spaces": 2, "free": 1, "full": False}
    assert flags == []


def test_impossible_counts_are_flagged_not_believed(tmp_path: Path) -> None:
    events = [
        car("exit", "UNDER", "monthly", 9),  # never seen coming in
        car("entry", "UNDER", "temporary", 1),
        car("entry", "UNDER", "temporary", 2),  # one temporary space only
    ]
    lots, flags = run(tmp_path / "j.db", events)
    under = lots[1]
    assert under["classes"]["temporary"]["cars"] == 2
    assert under["classes"]["monthly"]["cars"] == 0  # never below zero
    assert [f["reason"] for f in flags] == ["exit_without_entry", "over_capacity"]
    assert flags[1]["plate"] == "粤B00002"


def test_plate_camera_entries_through_the_broker_and_a_guard_recount(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    directory = tmp_path / "site"
    site = write_site(
        directory,
        extra=(
            f'\n[mqtt]\nhost = "{mqtt_broker.host}"\nport = {mqtt_broker.port}\n'
            f'username = "{mqtt_broker.username}"\npassword = "{mqtt_broker.password}"\n'
            '\n[[devices.access_points]]\nid = "G-BAR-IN"\nkind = "barrier"\n'
            'profile = "lpr-camera-barrier"\ntopic_prefix = "device/SN7"\nlot = "UNDERGROUND"\n'
            '\n[[parking.lots]]\nid = "UNDERGROUND"\nname = "地下停车场"\nspaces = 546\n'
            "classes = { temporary = 46, monthly = 500 }\n"
        ),
    )
    shutil.copy(PROFILES / "lpr-camera-barrier.toml", directory / "profiles")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        time.sleep(0.5)
        with MqttTestClient(mqtt_broker) as camera:
            camera.connect()
            for n, vehicle_type in enumerate([1, 1, 0, 1]):  # 1 monthly, 0 temporary
                read = {
                    "id": f"R-{n}",
                    "timestamp": 1795420800 + n,
                    "result": {
                        "plate": f"粤B1000{n}",
                        "plate_color": 1,
                        "confidence": 95.0,
                        "vehicle_type": vehicle_type,
                        "direction": 1,
                        "lane": 1,
                        "open": True,
                    },
                }
                camera.publish("device/SN7/message/up/ivs_result", json.dumps(read))
                if n == 0:  # the camera's retry of the first read
                    camera.publish("device/SN7/message/up/ivs_result", json.dumps(read))

        def lot() -> dict:
            body = httpx.get(f"{site.url}/api/v1/parking", headers=site.headers("guard")).json()
            return body["lots"][0]

        deadline = time.monotonic() + 10
        while lot()["cars"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        underground = lot()
        assert underground["cars"] == 4
        assert underground["classes"]["monthly"]["cars"] == 3
        assert underground["classes"]["temporary"] == {
            "cars": 1,
            "spaces": 46,
            "free": 45,
            "full": False,
        }
        recount = httpx.post(
            f"{site.url}/api/v1/parking/UNDERGROUND/recount",
            json={"counts": {"monthly": 120, "temporary": 7}, "reason": "夜班清点车位"},
            headers=site.headers("guard"),
        )
        assert recount.status_code == 200, recount.text
        assert recount.json()["before"] == {"monthly": 3, "temporary": 1}
        assert lot()["cars"] == 127
        audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("supervisor")).json()
        [entry] = [a for a in audit["audit"] if a["action"] == "parking.recount"]
        assert entry["who"] == "guard1" and entry["reason"] == "夜班清点车位"
    finally:
        gateway.close()
