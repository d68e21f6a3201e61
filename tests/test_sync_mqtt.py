"""The MQTT upstream transport against a real Mosquitto, restarted mid-stream.

Central's side is played by a persistent-session QoS 1 subscriber, as a
stream processor behind the central broker cluster would be. Every reading
must reach it (copies allowed: central de-duplicates by id), and an item
counts as delivered only on its PUBACK.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from pathlib import Path

import pytest

from gateway.config import MqttUpstream
from gateway.journal.store import Journal
from gateway.sync.http import HttpTransport
from gateway.sync.mqtt import MqttTransport
from gateway.sync.sender import SyncSender
from tests.harness.broker import MqttTestClient, mosquitto_binary, run_broker
from tests.test_sync import FAST, SITE, TOKEN, outbox_count, reading_events, wait_for

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs mosquitto (a broker that persists sessions)"
)


def collect(central: MqttTestClient, into: dict[str, int], quiet_s: float) -> None:
    """Drain the subscriber's messages until none came for ``quiet_s``."""
    while True:
        try:
            message = central.messages.get(timeout=quiet_s)
        except queue.Empty:
            return
        reading_id = json.loads(message.payload)["reading_id"]
        into[reading_id] = into.get(reading_id, 0) + 1


def test_every_reading_arrives_through_a_broker_restart(tmp_path: Path) -> None:
    events = reading_events(3000)
    expected = {r["reading_id"] for e in events for r in e.payload["readings"]}
    received: dict[str, int] = {}
    left_at_restart: list[int] = []
    with run_broker("mosquitto", persistent=True) as broker:
        central = MqttTestClient(broker, "central-processor", clean_session=False, timeout=10)
        central.connect()
        central.subscribe(f"sites/{SITE}/#", qos=1)
        upstream = MqttUpstream(
            host=broker.host,
            port=broker.port,
            username=broker.username,
            password=broker.password,
            tls=False,
            ack_timeout_s=1.0,
        )

        async def main() -> None:
            journal = await Journal.open(tmp_path / "j.db")
            http = HttpTransport("http://127.0.0.1:9", SITE, TOKEN)  # heartbeat only: unused
            transport = MqttTransport(upstream, SITE, fallback=http)
            sender = SyncSender(journal, transport, _clock(), FAST)
            await journal.submit_many(events)
            task = asyncio.create_task(sender.run())
            try:
                await wait_for(lambda: _some(central), 15)
                await asyncio.to_thread(broker.restart)  # mid-stream
                left_at_restart.append(await outbox_count(journal))
                await wait_for(lambda: _drained(journal, task), 60)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await transport.close()
                await journal.close()

        asyncio.run(main())
        central.wait_connected()  # the subscriber's reconnect after the restart
        collect(central, received, quiet_s=2.0)
        central.close()
    assert left_at_restart[0] > 0, "the restart came after the last send: nothing tested"
    missing = expected - received.keys()
    assert not missing, f"{len(missing)} readings never reached central"
    assert received.keys() == expected


async def _some(central: MqttTestClient) -> bool:
    return central.messages.qsize() >= 300


async def _drained(journal: Journal, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
    return await outbox_count(journal) == 0


def _clock():  # type: ignore[no-untyped-def]
    from gateway.clock import Clock

    return Clock()


def test_a_refused_login_is_an_auth_failure_not_a_retry_storm(tmp_path: Path) -> None:
    events = reading_events(10)
    with run_broker("mosquitto") as broker:
        upstream = MqttUpstream(
            host=broker.host,
            port=broker.port,
            username=broker.username,
            password="wrong-password",
            tls=False,
        )

        async def main() -> str:
            journal = await Journal.open(tmp_path / "j.db")
            http = HttpTransport("http://127.0.0.1:9", SITE, TOKEN)
            transport = MqttTransport(upstream, SITE, fallback=http)
            sender = SyncSender(journal, transport, _clock(), FAST)
            await journal.submit_many(events)
            task = asyncio.create_task(sender.run())
            try:
                deadline = time.monotonic() + 10
                while sender.state != "auth_failed" and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                return sender.state
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await transport.close()
                await journal.close()

        assert asyncio.run(main()) == "auth_failed"
