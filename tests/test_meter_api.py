"""Meters end to end over a real Modbus server: a period close across the month
boundary (read, and estimated when the meter was down), the owed list, the
CSV export, manual readings and replacements through the API."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from gateway.app import GatewayService
from gateway.clock import ShiftedClock
from gateway.config import load_site_config
from tests.harness.modbus import ModbusTcpServer
from tests.harness.site import Site
from tests.test_modbus_adapter import METER, put, site_for, until

SHANGHAI = ZoneInfo("Asia/Shanghai")


@asynccontextmanager
async def running(site: Site, clock: ShiftedClock) -> AsyncIterator[GatewayService]:
    service = GatewayService(load_site_config(site.path), clock=clock)
    task = asyncio.create_task(service.run())
    try:
        await until(lambda: service.modbus is not None)
        yield service
    finally:
        service.stop.set()
        await asyncio.wait_for(task, 10)


def readings(site: Site) -> list[dict[str, Any]]:
    conn = sqlite3.connect(site.journal)
    rows = conn.execute(
        "SELECT payload FROM events WHERE kind = 'meter.reading' ORDER BY seq"
    ).fetchall()
    conn.close()
    return [json.loads(row[0]) for row in rows]


def closes(site: Site) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(site.journal)
    rows = conn.execute("SELECT meter, period, status FROM period_close").fetchall()
    conn.close()
    return rows


def test_period_close_is_read_at_midnight_and_exported(tmp_path: Path) -> None:
    clock = ShiftedClock(datetime(2026, 11, 30, 23, 59, 57, tzinfo=SHANGHAI))
    with ModbusTcpServer(units=(1,), size=400) as server:
        put(server, 1, {"import_kwh": 4321.5, "voltage": 229.0})
        site = site_for(
            tmp_path, server.port, devices=METER.format(id="B01-0101-E", unit=1, poll=60)
        )

        async def main() -> None:
            async with running(site, clock):
                await until(lambda: closes(site) == [("B01-0101-E", "2026-11", "read")], 8)
                async with httpx.AsyncClient(base_url=site.url) as client:
                    owed = await client.get("/api/v1/billing/owed", headers=site.headers("guard"))
                    assert owed.json() == {"owed": {}}
                    denied = await client.get(
                        "/api/v1/billing/2026-11/period-close.csv", headers=site.headers("guard")
                    )
                    assert denied.status_code == 403
                    bad = await client.get(
                        "/api/v1/billing/2026-13/period-close.csv", headers=site.headers("central")
                    )
                    assert bad.status_code == 422
                    export = await client.get(
                        "/api/v1/billing/2026-11/period-close.csv", headers=site.headers("central")
                    )
                    assert export.status_code == 200
                    assert export.content.startswith("\ufeff".encode())
                    rows = list(csv.reader(io.StringIO(export.content.decode("utf-8-sig"))))
                    assert rows[0][0] == "表号 meter_id"
                    import_row = next(r for r in rows[1:] if r[4] == "import_kwh")
                    assert import_row[0] == "B01-0101-E"
                    assert float(import_row[5]) == 4321.5
                    assert import_row[7].startswith("2026-12-01T00:00:0")
                    assert import_row[8] == "good"
                    assert import_row[11] == "read"

        asyncio.run(main())
    closing = [r for r in readings(site) if r["billing_period"] == "2026-11"]
    assert len(closing) == 1
    assert closing[0]["read_at"].startswith("2026-12-01T00:00:0")


def test_period_close_is_estimated_when_the_meter_was_down(tmp_path: Path) -> None:
    # 1 real second = 5 site minutes: the 15-minute read window passes in 3 s
    clock = ShiftedClock(datetime(2026, 11, 30, 23, 50, tzinfo=SHANGHAI), speed=300)
    server = ModbusTcpServer(units=(1,), size=400)
    server.start()
    try:
        put(server, 1, {"import_kwh": 100.0})
        site = site_for(
            tmp_path,
            server.port,
            link_extra="offline_after = 100",
            devices=METER.format(id="B01-0101-E", unit=1, poll=1),
        )

        async def main() -> None:
            async with running(site, clock):
                await until(lambda: readings(site))
                server.stop()  # the meter's bus goes dead before midnight
                await until(lambda: clock.now() > datetime(2026, 12, 1, 0, 20, tzinfo=SHANGHAI), 10)
                assert closes(site) == [("B01-0101-E", "2026-11", "owed")]
                server.start()
                put(server, 1, {"import_kwh": 102.0})
                await until(lambda: closes(site) == [("B01-0101-E", "2026-11", "estimated")], 10)

        asyncio.run(main())
    finally:
        server.stop()
    [estimate] = [r for r in readings(site) if r["source"] == "estimate"]
    assert estimate["billing_period"] == "2026-11"
    assert estimate["read_at"] == "2026-12-01T00:00:00+08:00"
    reading = next(r for r in estimate["readings"] if r["register"] == "import_kwh")
    assert reading["quality"] == "estimated"
    assert 100.0 < reading["value"] < 102.0


def test_manual_reading_and_replacement_through_the_api(tmp_path: Path) -> None:
    clock = ShiftedClock(datetime(2026, 11, 23, 10, tzinfo=SHANGHAI))
    with ModbusTcpServer(units=(1,), size=400) as server:
        put(server, 1, {"import_kwh": 50.0})
        site = site_for(tmp_path, server.port, devices=METER.format(id="M1", unit=1, poll=600))

        async def main() -> None:
            async with running(site, clock):
                await until(lambda: readings(site))
                async with httpx.AsyncClient(base_url=site.url) as client:
                    body = {
                        "register": "import_kwh",
                        "value": 50.5,
                        "reason": "总线故障，人工抄表",
                        "photo_ref": "IMG_1.jpg",
                    }
                    guard = await client.post(
                        "/api/v1/meters/M1/manual-readings",
                        json=body,
                        headers=site.headers("guard"),
                    )
                    assert guard.status_code == 403
                    ok = await client.post(
                        "/api/v1/meters/M1/manual-readings",
                        json=body,
                        headers=site.headers("supervisor"),
                    )
                    assert ok.status_code == 200, ok.text
                    assert ok.json()["reading"]["flags"] == ["manual"]
                    wrong = await client.post(
                        "/api/v1/meters/M1/manual-readings",
                        json={**body, "register": "voltage"},
                        headers=site.headers("supervisor"),
                    )
                    assert wrong.status_code == 422
                    nan = await client.post(
                        "/api/v1/meters/M1/manual-readings",
                        content=b'{"register": "import_kwh", "value": NaN, "reason": "xx"}',
                        headers={**site.headers("supervisor"), "Content-Type": "application/json"},
                    )
                    assert nan.status_code == 422
                    swap = await client.post(
                        "/api/v1/meters/M1/replacements",
                        json={
                            "register": "import_kwh",
                            "old_final": 50.9,
                            "new_initial": 0.0,
                            "reason": "表计烧毁更换",
                        },
                        headers=site.headers("supervisor"),
                    )
                    assert swap.status_code == 200, swap.text
                    audit = (
                        await client.get("/api/v1/audit", headers=site.headers("admin"))
                    ).json()["audit"]
                    assert [a["action"] for a in audit[:2]] == [
                        "meter.replacement",
                        "meter.manual_reading",
                    ]
                    history = await client.get(
                        "/api/v1/meters/M1/readings", headers=site.headers("guard")
                    )
                    sources = [e["payload"]["source"] for e in history.json()["readings"]]
                    assert sources[:2] == ["manual", "modbus"]
                    meters = (
                        await client.get("/api/v1/meters", headers=site.headers("guard"))
                    ).json()
                    assert meters["meters"][0]["state"] == "online"
                    devices = (
                        await client.get("/api/v1/devices", headers=site.headers("central"))
                    ).json()
                    assert devices["devices"][0]["counters"]["ok"] >= 1

        asyncio.run(main())
