"""The Modbus side of a running gateway against pymodbus's real server:
meters decoded and journalled, I/O contacts within 1 s, health by failure
kind, dead meters not starving live ones, outputs switched and audited."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.adapters.modbus.decode import encode_value
from gateway.app import GatewayService
from gateway.config import load_site_config
from gateway.profiles import load_profile
from tests.harness.modbus import ModbusTcpServer
from tests.harness.site import Site, write_site

PROFILES = Path(__file__).parent.parent / "config" / "profiles"
SDM120 = load_profile(PROFILES / "eastron-sdm120.toml")


def put(server: ModbusTcpServer, unit: int, values: dict[str, float]) -> None:
    """Write meter values into the server the way the real meter holds them."""
    for name, value in values.items():
        spec = SDM120.value(name)
        server.set_input_registers(unit, spec.address, encode_value(spec, value))


def site_for(tmp_path: Path, port: int, *, link_extra: str = "", devices: str) -> Site:
    site = write_site(
        tmp_path,
        extra=(
            f'\n[[links]]\nid = "L1"\ntype = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}\n'
            f"timeout_s = 0.2\nretries = 0\n{link_extra}\n{devices}"
        ),
    )
    shutil.rmtree(tmp_path / "profiles")
    shutil.copytree(PROFILES, tmp_path / "profiles")
    return site


METER = """
[[devices.meters]]
id = "{id}"
link = "L1"
unit_id = {unit}
profile = "eastron-sdm120"
utility = "electricity"
poll_s = {poll}
"""

IO = """
[[devices.io_modules]]
id = "IO-1"
link = "L1"
unit_id = 3
profile = "relay-8in8out"
poll_s = 0.1
inputs = [
  { number = 1, meaning = "fire_panel_alarm", where = "消防控制室" },
  { number = 2, meaning = "sump_high", where = "B01", abnormal = "open" },
]
outputs = [{ number = 1, name = "声光报警器", meaning = "sounder" }]
"""


@asynccontextmanager
async def running(site: Site) -> AsyncIterator[GatewayService]:
    service = GatewayService(load_site_config(site.path))
    task = asyncio.create_task(service.run())
    try:
        for _ in range(100):
            if service.journal is not None and service.modbus is not None:
                break
            await asyncio.sleep(0.02)
        yield service
    finally:
        service.stop.set()
        await asyncio.wait_for(task, 10)


def events(site: Site, kind: str, device: str | None = None) -> list[dict[str, Any]]:
    conn = sqlite3.connect(site.journal)
    rows = conn.execute(
        "SELECT device, payload FROM events WHERE kind = ? AND (? IS NULL OR device = ?) "
        "ORDER BY seq",
        (kind, device, device),
    ).fetchall()
    conn.close()
    return [{"device": d, **json.loads(p)} for d, p in rows]


async def until(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met in {timeout} s")


def test_meter_values_are_decoded_and_journalled(tmp_path: Path) -> None:
    with ModbusTcpServer(units=(1,), size=400) as server:
        put(
            server,
            1,
            {
                "voltage": 230.2,
                "frequency_hz": 50.01,
                "import_kwh": 1234.56,
                "export_kwh": 0.0,
                "total_kwh": 1234.56,
            },
        )
        site = site_for(tmp_path, server.port, devices=METER.format(id="M1", unit=1, poll=1))

        async def main() -> None:
            async with running(site):
                await until(lambda: len(events(site, "meter.reading", "M1")) >= 1)

        asyncio.run(main())
    first = events(site, "meter.reading", "M1")[0]
    assert first["instant"]["voltage"] == pytest.approx(230.2, abs=1e-4)
    assert first["instant"]["frequency_hz"] == pytest.approx(50.01, abs=1e-4)
    import_kwh = next(r for r in first["readings"] if r["register"] == "import_kwh")
    assert import_kwh["value"] == pytest.approx(1234.56, abs=1e-3)
    assert import_kwh["quality"] == "good"
    assert events(site, "device.health", "M1")[0]["state"] == "online"


def test_io_contact_change_reaches_the_journal_within_1_s(tmp_path: Path) -> None:
    with ModbusTcpServer(units=(3,), size=400) as server:
        server.set_discrete_inputs(3, 0, [False, True])  # sump switch closed = normal
        site = site_for(tmp_path, server.port, devices=IO)

        async def main() -> float:
            async with running(site):
                await until(lambda: len(events(site, "io.input")) >= 2)
                started = time.monotonic()
                server.set_discrete_inputs(3, 0, [True, True])
                await until(lambda: len(events(site, "io.input")) >= 3)
                return time.monotonic() - started

        elapsed = asyncio.run(main())
    assert elapsed < 1.0
    initial, sump, fire = events(site, "io.input")
    assert (initial["meaning"], initial["state"], initial["abnormal"], initial["initial"]) == (
        "fire_panel_alarm",
        "open",
        False,
        True,
    )
    assert (sump["meaning"], sump["state"], sump["abnormal"]) == ("sump_high", "closed", False)
    assert (fire["meaning"], fire["state"], fire["abnormal"], fire["initial"]) == (
        "fire_panel_alarm",
        "closed",
        True,
        False,
    )
    assert fire["where"] == "消防控制室"


def test_exception_answers_and_silence_are_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    # unit 1 lives; unit 7 is absent: the server answers exception 11 for it
    with ModbusTcpServer(units=(1,), size=400) as server:
        put(server, 1, {"import_kwh": 10.0})
        devices = METER.format(id="LIVE", unit=1, poll=1) + METER.format(id="GONE", unit=7, poll=1)
        site = site_for(tmp_path, server.port, devices=devices)

        async def main() -> dict[str, Any]:
            async with running(site) as service:
                await until(
                    lambda: [
                        e for e in events(site, "device.health", "GONE") if e["state"] == "offline"
                    ]
                )
                await asyncio.sleep(0.5)
                assert service.modbus is not None
                nonlocal site_metrics
                site_metrics = service.metrics.render().decode()
                return {d.device: d for d in service.modbus.devices()}

        site_metrics = ""
        health = asyncio.run(main())
    gone = health["GONE"]
    assert gone.state.value == "offline"
    assert gone.counters["exception_11"] >= 3
    assert [e["state"] for e in events(site, "device.health", "GONE")] == ["degraded", "offline"]
    offline_lines = [
        r for r in caplog.records if "device offline" in r.getMessage() and "GONE" in r.getMessage()
    ]
    assert len(offline_lines) == 1
    assert health["LIVE"].state.value == "online"
    assert health["LIVE"].counters["ok"] >= 2
    metrics = site_metrics
    assert 'gateway_devices{kind="meter",state="offline"} 1.0' in metrics
    assert 'gateway_device_failures_total{device="GONE",failure="exception_11"}' in metrics


def test_a_silent_meter_times_out_without_starving_the_bus(tmp_path: Path) -> None:
    with ModbusTcpServer(units=(1, 3), size=400, ignore_missing_units=True) as server:
        put(server, 1, {"import_kwh": 10.0})
        devices = METER.format(id="LIVE", unit=1, poll=1) + METER.format(id="MUTE", unit=9, poll=1)
        site = site_for(tmp_path, server.port, devices=devices + IO)

        async def main() -> dict[str, Any]:
            async with running(site) as service:
                await asyncio.sleep(3.5)
                assert service.modbus is not None
                return {d.device: d for d in service.modbus.devices()}

        health = asyncio.run(main())
    mute = health["MUTE"]
    assert mute.state.value == "offline"
    assert mute.counters["timeout"] == 3  # then it backs off (10 s and growing)
    assert health["LIVE"].counters["ok"] >= 3
    assert health["IO-1"].counters["ok"] >= 20  # contacts kept being read throughout


def test_output_switch_needs_a_supervisor_and_is_audited(tmp_path: Path) -> None:
    with ModbusTcpServer(units=(3,), size=400) as server:
        site = site_for(tmp_path, server.port, devices=IO)

        async def main() -> None:
            async with running(site):
                async with httpx.AsyncClient(base_url=site.url) as client:
                    await until(lambda: events(site, "io.input"))
                    body = {"on": True, "reason": "测试声光报警器"}
                    denied = await client.post(
                        "/api/v1/io/IO-1/outputs/1", json=body, headers=site.headers("guard")
                    )
                    assert denied.status_code == 403
                    done = await client.post(
                        "/api/v1/io/IO-1/outputs/1", json=body, headers=site.headers("supervisor")
                    )
                    assert done.status_code == 200, done.text
                    assert server.get_coils(3, 0, 1) == [True]
                    missing = await client.post(
                        "/api/v1/io/IO-1/outputs/9", json=body, headers=site.headers("supervisor")
                    )
                    assert missing.status_code == 404
                    audit = (
                        await client.get("/api/v1/audit", headers=site.headers("supervisor"))
                    ).json()
                    entry = audit["audit"][0]
                    assert (entry["action"], entry["target"], entry["who"]) == (
                        "io.output",
                        "IO-1/1",
                        "supervisor1",
                    )
                    assert entry["reason"] == "测试声光报警器"

        asyncio.run(main())


class RtuOverTcpServer(ModbusTcpServer):
    """A serial device server (串口服务器): RTU frames, CRC and all, inside TCP."""

    def _create_server(self, devices: list[Any]) -> Any:
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusTcpServer as PymodbusTcpServer

        return PymodbusTcpServer(devices, address=(self.host, self.port), framer=FramerType.RTU)


def test_rtu_over_tcp_link_reads_through_a_device_server(tmp_path: Path) -> None:
    with RtuOverTcpServer(units=(1,), size=400) as server:
        put(server, 1, {"import_kwh": 777.25, "voltage": 231.5})
        site = site_for(tmp_path, server.port, devices=METER.format(id="M1", unit=1, poll=1))
        site.path.write_text(
            site.path.read_text().replace('type = "modbus_tcp"', 'type = "rtu_over_tcp"')
        )

        async def main() -> None:
            async with running(site):
                await until(lambda: events(site, "meter.reading", "M1"))

        asyncio.run(main())
    [reading] = events(site, "meter.reading", "M1")[:1]
    assert reading["instant"]["voltage"] == 231.5
    assert {r["register"]: r["value"] for r in reading["readings"]}["import_kwh"] == 777.25


def test_main_meters_are_polled_before_household_meters_when_both_are_due() -> None:
    from gateway.adapters.modbus.poller import (
        PRIORITY_BILLED,
        PRIORITY_IO,
        PRIORITY_MAIN,
        LinkPoller,
        Polled,
    )
    from gateway.health import DeviceHealth

    async def main() -> list[str]:
        now = asyncio.get_running_loop().time()
        devices = [
            Polled("HOME-1", 1, 900, PRIORITY_BILLED, DeviceHealth("HOME-1", "meter"), due=now - 5),
            Polled("MAIN-1", 2, 60, PRIORITY_MAIN, DeviceHealth("MAIN-1", "meter"), due=now - 1),
            Polled("IO-1", 3, 0.25, PRIORITY_IO, DeviceHealth("IO-1", "io_module"), due=now),
            Polled(
                "HOME-2", 4, 900, PRIORITY_BILLED, DeviceHealth("HOME-2", "meter"), due=now + 60
            ),
        ]
        poller = LinkPoller(None, devices, book=None, journal=None, clock=None)  # type: ignore[arg-type]
        order = []
        for _ in range(3):
            device = poller._most_urgent()
            order.append(device.id)
            device.due = now + 1000
        return order

    assert asyncio.run(main()) == ["IO-1", "MAIN-1", "HOME-1"]


def test_offline_devices_are_retried_at_growing_intervals() -> None:
    from datetime import UTC, datetime

    from gateway.adapters.modbus.poller import PRIORITY_BILLED, Polled
    from gateway.health import DeviceHealth

    device = Polled("M", 1, 60, PRIORITY_BILLED, DeviceHealth("M", "meter", offline_after=3))
    assert device.next_delay() == 60
    now = datetime.now(UTC)
    device.health.failure("timeout", "no answer", now)
    assert device.next_delay() == 10  # degraded: try again soon
    device.health.failure("timeout", "no answer", now)
    device.health.failure("timeout", "no answer", now)
    delays = []
    for polls in range(8):
        device.offline_polls = polls
        delays.append(device.next_delay())
    assert delays == [60, 120, 240, 480, 960, 1800, 1800, 1800]
    device.health.success(now)
    assert device.next_delay() == 60
