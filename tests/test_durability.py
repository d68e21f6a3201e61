"""kill -9 under load: every event whose submission was acknowledged is in the
journal exactly once after a restart, and retries of unacknowledged ones are
stored once too (DESIGN.md invariant 1)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
from pathlib import Path

import httpx

from tests.harness.site import GatewayProcess, Site, write_site

PRODUCERS = 32
BATCH = 100


async def _load(site: Site, cycle: int, acked: set[str], unacked: list[list[dict]]) -> None:
    """Submit batches from several producers until the gateway stops answering."""
    headers = site.headers("admin")

    async def producer(p: int, client: httpx.AsyncClient) -> None:
        n = 0
        while True:
            batch = [
                {
                    "id": f"c{cycle}-p{p}-{n + i}",
                    "kind": "meter.reading",
                    "device": f"m{p}",
                    "payload": {"cycle": cycle, "producer": p, "n": n + i},
                }
                for i in range(BATCH)
            ]
            n += BATCH
            try:
                response = await client.post(
                    "/api/v1/events", json={"events": batch}, headers=headers
                )
            except httpx.TransportError:
                unacked.append(batch)
                return
            if response.status_code == 200:
                acked.update(e["id"] for e in batch)
            else:
                unacked.append(batch)
                return

    async with httpx.AsyncClient(base_url=site.url, timeout=5) as client:
        await asyncio.gather(*(producer(p, client) for p in range(PRODUCERS)))


def _kill_during_load(site: Site, cycle: int, delay: float) -> tuple[set[str], list[list[dict]]]:
    acked: set[str] = set()
    unacked: list[list[dict]] = []
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()

        async def main() -> None:
            load = asyncio.create_task(_load(site, cycle, acked, unacked))
            await asyncio.sleep(delay)
            gateway.signal(signal.SIGKILL)
            await asyncio.wait_for(load, 30)

        asyncio.run(main())
        assert gateway.wait(10) == -signal.SIGKILL
    finally:
        gateway.close()
    return acked, unacked


def _journal_rows(path: Path) -> dict[str, dict]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        duplicates = conn.execute(
            "SELECT id FROM events GROUP BY id HAVING count(*) > 1"
        ).fetchall()
        assert duplicates == []
        return {
            row[0]: json.loads(row[1])
            for row in conn.execute("SELECT id, payload FROM events WHERE kind = 'meter.reading'")
        }
    finally:
        conn.close()


def _resubmit(site: Site, batches: list[list[dict]]) -> None:
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        with httpx.Client(base_url=site.url, timeout=10) as client:
            for batch in batches:
                response = client.post(
                    "/api/v1/events", json={"events": batch}, headers=site.headers("admin")
                )
                assert response.status_code == 200, response.text
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(10) == 0
    finally:
        gateway.close()


def test_acknowledged_events_survive_kill_9_exactly_once(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    rng = random.Random()
    all_acked: set[str] = set()
    all_sent: dict[str, dict] = {}
    for cycle in range(4):
        delay = rng.uniform(0.3, 2.0)
        acked, unacked = _kill_during_load(site, cycle, delay)
        assert acked, f"cycle {cycle}: nothing acknowledged in {delay:.2f} s"
        all_acked |= acked
        for batch in unacked:
            all_sent.update({e["id"]: e["payload"] for e in batch})

        stored = _journal_rows(site.journal)
        missing = all_acked - stored.keys()
        assert not missing, f"cycle {cycle} (kill after {delay:.2f} s): lost {sorted(missing)[:5]}"

        # the producers retry what was not acknowledged, with the same ids
        _resubmit(site, unacked)

    stored = _journal_rows(site.journal)
    assert all_acked <= stored.keys()
    assert set(all_sent) <= stored.keys()
    for event_id, payload in all_sent.items():
        assert stored[event_id] == payload
    # nothing stored that nobody sent
    sent_ids = all_acked | set(all_sent)
    assert set(stored) == sent_ids
