"""Sync inside the running service: kill -9 mid-send, the status API and
/metrics, dead letters re-queued by a supervisor through the API."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.events import Event
from gateway.journal.store import Journal
from gateway.sync.receiver import CentralReceiver
from tests.harness.site import GatewayProcess, Site, write_site
from tests.test_sync import reading_events

SITE = "test-site"
TOKEN = "central-token-for-test-site"


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralReceiver]:
    with CentralReceiver(tmp_path / "central.db", sites={SITE: TOKEN}) as receiver:
        yield receiver


def sync_site(directory: Path, central: CentralReceiver) -> Site:
    return write_site(
        directory,
        extra=(
            f'\n[sync]\nbase_url = "{central.base_url}"\ntoken = "{TOKEN}"\n'
            "backoff_initial_s = 0.1\nbackoff_max_s = 1.0\nread_timeout_s = 2.0\n"
            "pull_interval_s = 1.0\nheartbeat_s = 1.0\n"
        ),
    )


def seed(journal: Path, events: list[Event]) -> None:
    async def main() -> None:
        j = await Journal.open(journal)
        try:
            await j.submit_many(events)
        finally:
            await j.close()

    asyncio.run(main())


def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def test_killed_mid_send_and_restarted_every_reading_is_stored_once(
    tmp_path: Path, central: CentralReceiver
) -> None:
    site = sync_site(tmp_path / "site", central)
    events = reading_events(12_000, meters=200)
    seed(site.journal, events)
    central.set_faults(delay_s=0.15)  # each batch is on the wire for a while
    rng = random.Random(5)
    for _cycle in range(3):
        gateway = GatewayProcess(site)
        try:
            gateway.wait_ready()
            wait_until(lambda: central.stats()["readings"]["deliveries"] > 0, 20, "first delivery")
            time.sleep(rng.uniform(0.2, 0.6))
            gateway.signal(signal.SIGKILL)
            gateway.wait(10)
        finally:
            gateway.close()
    central.set_faults(delay_s=0.0)
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        wait_until(lambda: central.stats()["readings"]["stored"] == 12_000, 60, "all stored")
        status = httpx.get(f"{site.url}/api/v1/sync", headers=site.headers("guard")).json()

        def drained() -> bool:
            body = httpx.get(f"{site.url}/api/v1/sync", headers=site.headers("guard")).json()
            return body["streams"]["meter-readings"]["backlog"] == 0

        wait_until(drained, 20, "backlog empty")
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(10) == 0
    finally:
        gateway.close()
    readings = central.readings(SITE)
    assert len(readings) == 12_000
    assert len({r["reading_id"] for r in readings}) == 12_000
    assert status["enabled"] is True
    assert central.last_heartbeat(SITE) is not None


def test_status_api_and_metrics_show_the_backlog(tmp_path: Path, central: CentralReceiver) -> None:
    site = sync_site(tmp_path / "site", central)
    seed(site.journal, reading_events(300))
    central.down_for(30)
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()

        def backlog() -> int:
            body = httpx.get(f"{site.url}/api/v1/sync", headers=site.headers("guard")).json()
            return int(body["streams"]["meter-readings"]["backlog"])

        def status() -> dict:
            return httpx.get(f"{site.url}/api/v1/sync", headers=site.headers("guard")).json()

        wait_until(lambda: backlog() == 300, 15, "backlog of 300")
        # between attempts it is "retrying"; during one, briefly "sending"
        wait_until(lambda: status()["state"] == "retrying", 5, "state retrying")
        body = status()
        readings = body["streams"]["meter-readings"]
        assert body["last_error"] and "connection failed" in body["last_error"]
        assert readings["oldest_age_s"] >= 0
        assert body["backlog_level"] == "normal"
        assert httpx.get(f"{site.url}/api/v1/sync").status_code == 401
        metrics = httpx.get(f"{site.url}/metrics", headers=site.headers("admin")).text
        assert 'gateway_sync_backlog_items{stream="meter-readings"} 300.0' in metrics
        assert 'gateway_sync_state{state="retrying"} 1.0' in metrics
    finally:
        gateway.close()


def test_a_supervisor_requeues_a_corrected_dead_letter_through_the_api(
    tmp_path: Path, central: CentralReceiver
) -> None:
    site = sync_site(tmp_path / "site", central)
    [good, bad] = reading_events(2)
    bad.payload["readings"][0]["value"] = -5.0  # central refuses negative values
    seed(site.journal, [good, bad])
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        url = f"{site.url}/api/v1/sync/dead-letters"

        def letters() -> list[dict]:
            return httpx.get(url, headers=site.headers("guard")).json()["dead_letters"]

        wait_until(lambda: len(letters()) == 1, 15, "one dead letter")
        [letter] = letters()
        assert letter["body"]["value"] == -5.0
        assert "value" in letter["error"]
        fixed = {**letter["body"], "value": 5.0}
        requeue = f"{url}/{letter['id']}/requeue"
        body = {"reason": "抄表员核对为 5.0", "item": fixed}
        assert httpx.post(requeue, json=body, headers=site.headers("guard")).status_code == 403
        wrong_id = {"reason": "typo", "item": {**fixed, "reading_id": "other"}}
        answer = httpx.post(requeue, json=wrong_id, headers=site.headers("supervisor"))
        assert answer.status_code == 409 and "reading_id" in answer.text
        answer = httpx.post(requeue, json=body, headers=site.headers("supervisor"))
        assert answer.status_code == 200, answer.text
        again = httpx.post(requeue, json=body, headers=site.headers("supervisor"))
        assert again.status_code == 409
        wait_until(lambda: central.stats()["readings"]["stored"] == 2, 15, "corrected stored")
        stored = {r["reading_id"]: r["value"] for r in central.readings(SITE)}
        assert stored[fixed["reading_id"]] == 5.0
        audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("supervisor")).json()
        [entry] = [a for a in audit["audit"] if a["action"] == "sync.requeue"]
        assert entry["who"] == "supervisor1" and entry["reason"] == "抄表员核对为 5.0"
        assert letters() == []
    finally:
        gateway.close()
