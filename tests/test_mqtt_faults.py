"""Gates over MQTT under bad conditions, against a real broker.

The gateway's access side (``AccessSide``: one persistent site-broker session,
mapping by profile, journal commit, PUBACK only after the commit) runs
in-process; the devices are real MQTT clients (paho, or ``mosquitto_pub`` for
a flood at native speed). What must hold whatever the broker or a device does:

* a broker restarted in the middle of a QoS 1 stream loses nothing it
  acknowledged to the device, and nothing is stored twice (redeliveries carry
  the same sequence number, hence the same event id);
* one device flooding (20,000 messages as fast as it can, one in ten garbage)
  does not stop the gateway; every valid event is stored once, the garbage is
  counted per gate and reason, and the log is not flooded;
* the flood waits at the broker, not in the gateway's memory: the gateway's
  inbox never holds more than its own limit (``INBOX_LIMIT``), even from a
  broker that overshoots its in-flight window (Mosquitto 2.0.11 sends
  thousands more than the 20 it is configured for while the subscriber
  acknowledges);
* a retained event (left at the broker, describing the past) is not journalled
  as a new passage; the events after it are;
* a gateway started while the broker is down connects when it comes up;
* a batch handled across a reconnect does not acknowledge the new
  connection's messages that happen to carry the same message ids.

The last two were found by these tests and fixed in the gateway (it used to
acknowledge old message ids on a new connection, and relied on the broker's
window alone for its memory bound).

The journal is read afterwards with plain sqlite3, as an auditor would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.adapters.mqtt import client as mqtt_client
from gateway.adapters.mqtt.client import Message, SiteBroker
from gateway.adapters.mqtt.side import AccessSide
from gateway.clock import Clock
from gateway.config import MqttBroker, parse_site_config
from gateway.journal.store import Journal
from tests.harness.broker import Broker, MqttTestClient, mosquitto_binary, run_broker

ROOT = Path(__file__).resolve().parents[1]
SIDE_LOGGER = "gateway.adapters.mqtt.side"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or shutil.which("/usr/bin/mosquitto_pub")


needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs mosquitto (persistence, in-flight window)"
)
needs_mosquitto_pub = pytest.mark.skipif(
    mosquitto_binary() is None or MOSQUITTO_PUB is None,
    reason="needs mosquitto and mosquitto_pub (a device flooding at native speed)",
)


# ---- the gateway's access side, in-process ------------------------------------------------


def site_text(broker: Broker, gates: list[str]) -> str:
    points = "".join(
        f'\n[[devices.access_points]]\nid = "{gate}"\nkind = "turnstile"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "site/gates/{gate}"\n'
        for gate in gates
    )
    return (
        '[site]\nid = "t"\nname = "t"\nprofiles_dir = "profiles"\n'
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
        'client_id = "gw-under-test"\n' + points
    )


@asynccontextmanager
async def access_side(
    directory: Path, broker: Broker, gates: list[str] | None = None
) -> AsyncIterator[AccessSide]:
    """The access side serving ``gates`` (default G00) from ``broker``, its journal
    in ``directory/journal.db``; stopped and the journal closed on exit."""
    shutil.copytree(ROOT / "config" / "profiles", directory / "profiles")
    text = site_text(broker, gates or ["G00"])
    (directory / "site.toml").write_text(text, encoding="utf-8")
    config = parse_site_config(text, directory / "site.toml")
    journal = await Journal.open(directory / "journal.db")
    side = AccessSide.build(config, journal, Clock())
    task = asyncio.create_task(side.broker.run())
    try:
        yield side
        assert not task.done(), f"the access side stopped by itself: {task}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await journal.close()


def access_ids(db: Path) -> list[str]:
    """Ids of the access events in the journal, one per stored row."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT id FROM events WHERE kind LIKE 'access.%'").fetchall()
    return [row[0] for row in rows]


def event_kinds(db: Path, device: str) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT kind FROM events WHERE device = ?", (device,)).fetchall()
    return [row[0] for row in rows]


async def settled(check: Callable[[], bool], within_s: float) -> bool:
    """Whether ``check()`` came to hold within ``within_s``."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def until(check: Callable[[], bool], within_s: float, what: str) -> None:
    if not await settled(check, within_s):
        raise AssertionError(f"not within {within_s} s: {what}")


async def hears_gate(broker: Broker, side: AccessSide, gate: str = "G00") -> None:
    """Wait until the gateway's subscription works: a device says "online" (not
    retained) until the gateway took it. A message published before that is
    dropped by the broker (no subscriber yet), which is not under test here."""
    with MqttTestClient(broker) as probe:
        await asyncio.to_thread(probe.connect)
        deadline = time.monotonic() + 15
        while side.accepted[gate] == 0:
            assert time.monotonic() < deadline, f"the gateway never heard {gate}"
            await asyncio.to_thread(probe.publish, f"site/gates/{gate}/status", b"online")
            await asyncio.sleep(0.2)


def gate_event(seq: int, kind: str = "granted") -> bytes:
    """A valid generic-json-gate event; it is journalled as ``<gate>#<seq>``."""
    body = {
        "type": kind,
        "card": f"{100000 + seq % 1000:08d}",
        "door": 1,
        "dir": 1 + seq % 2,
        "seq": seq,
        "ts": "2026-11-23T08:00:00+08:00",
    }
    return json.dumps(body).encode()


# ---- 1. broker restarts in the middle of a QoS 1 stream -------------------------------------


@dataclass
class StreamingDevice:
    """A gate controller publishing QoS 1 with its own persistent session.

    paho keeps what the broker has not acknowledged (broker away, in-flight
    window full) and sends it after the reconnect; ``acknowledged`` holds the
    message ids the broker answered with a PUBACK: the messages it took over.
    """

    broker: Broker
    client_id: str
    acknowledged: set[int] = field(default_factory=set)
    disconnects: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(self.broker.username, self.broker.password)
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(0)  # no limit: nothing refused while the broker is away
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self._connected.clear()
        self.disconnects += 1

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self._lock:
            self.acknowledged.add(mid)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("the device did not connect")

    def acknowledged_count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


STREAM = 2000
STREAM_GATES = ["G00", "G01", "G02", "G03"]


@needs_mosquitto
def test_a_broker_restarted_twice_mid_stream_loses_no_acknowledged_event_and_stores_none_twice(
    tmp_path: Path,
) -> None:
    db = tmp_path / "journal.db"
    sent: dict[int, str] = {}  # paho message id -> event id
    not_connected = 0  # publishes made while the device was cut off (paho keeps them)
    refused: list[int] = []  # any other return code would be a publish paho dropped
    restarted_at: list[int] = []  # events published when the broker went down

    def stream(device: StreamingDevice) -> None:
        nonlocal not_connected
        for seq in range(STREAM):
            gate = STREAM_GATES[seq % len(STREAM_GATES)]
            info = device.client.publish(f"site/gates/{gate}/event", gate_event(seq), qos=1)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                not_connected += 1
            elif info.rc != mqtt.MQTT_ERR_SUCCESS:
                refused.append(info.rc)
            sent[info.mid] = f"{gate}#{seq}"
            time.sleep(0.001)

    async def scenario(broker: Broker) -> tuple[AccessSide, StreamingDevice]:
        async with access_side(tmp_path, broker, STREAM_GATES) as side:
            assert await side.broker.wait_connected(10)
            await hears_gate(broker, side)
            device = StreamingDevice(broker, "gate-controller-1")
            device.start()
            publisher = threading.Thread(target=stream, args=(device,), name="gate-stream")
            publisher.start()
            try:
                for at in (STREAM // 10, STREAM // 2):
                    # each restart with both clients connected again after the last one
                    await until(lambda at=at: len(sent) >= at, 20, f"{at} events published")
                    await until(lambda: side.broker.connected and device.connected, 15, "up")
                    restarted_at.append(len(sent))
                    await asyncio.to_thread(broker.restart)
                await asyncio.to_thread(publisher.join, 30)
                assert not publisher.is_alive()
                # paho sends again what the broker had not acknowledged before it went away
                await settled(lambda: device.acknowledged_count() == STREAM, 15)
                await settled(lambda: len(set(access_ids(db))) >= STREAM, 15)
            finally:
                await asyncio.to_thread(device.close)
                publisher.join(30)
            return side, device

    with run_broker("mosquitto", persistent=True) as broker:
        side, device = asyncio.run(scenario(broker))

    stored = access_ids(db)
    acknowledged = {sent[mid] for mid in device.acknowledged if mid in sent}
    print(
        f"published {len(sent)} ({not_connected} while cut off), broker restarted after "
        f"{restarted_at}; acknowledged to the device {len(acknowledged)}, stored {len(stored)}; "
        f"gateway received {side.broker.counters['received']} (with redeliveries), "
        f"disconnects: gateway {side.broker.counters['disconnects']}, device {device.disconnects}"
    )
    assert not refused, f"paho refused publishes: {refused}"
    assert len(sent) == STREAM  # message ids unique within the stream
    assert all(at < STREAM for at in restarted_at), "a restart came after the stream"
    assert side.broker.counters["disconnects"] == 2
    assert acknowledged - set(stored) == set(), "events the broker acknowledged are missing"
    assert len(stored) == len(set(stored)), "an event is stored twice"
    # In fact all of them: paho kept and sent again what was not acknowledged.
    assert set(stored) == set(sent.values())
    assert not side.rejected, side.rejected


# Message ids are per connection. After a broker that lost its sessions (restart
# without persistence) the new connection numbers its messages from 1 again: a batch
# from the old connection must not acknowledge new, unhandled messages with its ids
# (a gateway stopping before handling them would never get them again).
@needs_mosquitto
def test_a_batch_from_before_a_reconnect_does_not_acknowledge_new_messages_with_its_ids() -> None:
    release = asyncio.Event()
    batches: list[list[bytes]] = []
    redelivered: list[bytes] = []

    async def slow_then_dying(batch: list[Message]) -> None:
        batches.append([message.payload for message in batch])
        if len(batches) == 1:
            await release.wait()  # a slow commit (disk stall) across the broker restart
        else:
            await asyncio.Event().wait()  # the gateway stops before these are committed

    async def recording(batch: list[Message]) -> None:
        redelivered.extend(message.payload for message in batch)

    async def scenario(broker: Broker) -> None:
        settings = MqttBroker(
            host=broker.host,
            port=broker.port,
            username=broker.username,
            password=broker.password,
            client_id="gw-under-test",
        )
        first = SiteBroker(settings, "t", ["site/gates/#"], slow_then_dying)
        task = asyncio.create_task(first.run())
        try:
            assert await first.wait_connected(10)
            await asyncio.sleep(0.3)  # the SUBSCRIBE
            with MqttTestClient(broker) as gate:
                await asyncio.to_thread(gate.connect)
                await asyncio.to_thread(gate.publish, "site/gates/G00/event", b"old")
            await until(lambda: len(batches) == 1, 10, "the first batch in the handler")
            await asyncio.to_thread(broker.restart)  # no persistence: sessions are gone
            await until(lambda: first.counters["disconnects"] == 1, 10, "the disconnect")
            assert await first.wait_connected(15)
            await asyncio.sleep(0.3)  # the SUBSCRIBE after the reconnect
            with MqttTestClient(broker) as gate:
                await asyncio.to_thread(gate.connect)
                for payload in (b"new-1", b"new-2"):
                    await asyncio.to_thread(gate.publish, "site/gates/G00/event", payload)
            await until(lambda: len(first._inbox) == 2, 10, "the new messages waiting")
            release.set()
            await until(lambda: len(batches) == 2, 10, "the new messages in the handler")
            await asyncio.sleep(0.3)  # the acknowledgements of the first batch go out
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # The gateway starts again: its session has what it did not acknowledge.
        second = SiteBroker(settings, "t", ["site/gates/#"], recording)
        task = asyncio.create_task(second.run())
        try:
            assert await second.wait_connected(10)
            await settled(lambda: len(redelivered) >= 2, 3)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with run_broker("mosquitto") as broker:
        asyncio.run(scenario(broker))
    assert batches == [[b"old"], [b"new-1", b"new-2"]]
    assert sorted(redelivered) == [b"new-1", b"new-2"], "a new message was acknowledged unhandled"


# ---- 2. a flood from one device -------------------------------------------------------------

FLOOD = 20_000  # one in ten is garbage


@dataclass
class Flood:
    side: AccessSide
    stored: list[str]
    inbox_max: int
    published_in_s: float
    handled_in_s: float


def flood_from_one_device(broker: Broker) -> float:
    """One device (its own process, at native speed) publishes FLOOD messages on
    one gate topic, QoS 1; returns the seconds until the broker acknowledged all."""
    lines = b"".join(
        (b"{not json" if seq % 10 == 9 else gate_event(seq)) + b"\n" for seq in range(FLOOD)
    )
    assert MOSQUITTO_PUB is not None
    command = [
        MOSQUITTO_PUB,
        *("-h", broker.host, "-p", str(broker.port)),
        *("-u", broker.username, "-P", broker.password),
        *("-i", "flooding-gate", "-q", "1", "-M", "100"),
        *("-t", "site/gates/G00/event", "-l"),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, input=lines, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


async def flooded(directory: Path, broker: Broker) -> Flood:
    """Serve G00 while one device floods it; sample the gateway's inbox meanwhile."""
    db = directory / "journal.db"
    valid = FLOOD - FLOOD // 10
    inbox_sizes = [0]
    sampling = threading.Event()

    def sample_inbox(side: AccessSide) -> None:
        while not sampling.is_set():
            inbox_sizes.append(len(side.broker._inbox))
            time.sleep(0.0005)

    async with access_side(directory, broker) as side:
        assert await side.broker.wait_connected(10)
        await hears_gate(broker, side)
        sampler = threading.Thread(target=sample_inbox, args=(side,), name="inbox-sampler")
        sampler.start()
        try:
            started = time.monotonic()
            published_in = await asyncio.to_thread(flood_from_one_device, broker)
            await until(
                lambda: (
                    side.rejected["G00", "not_json"] >= FLOOD // 10 and len(access_ids(db)) >= valid
                ),
                15,
                "the flood handled",
            )
            handled_in = time.monotonic() - started
        finally:
            sampling.set()
            sampler.join(5)
        # still serving: an ordinary event after the flood is journalled
        with MqttTestClient(broker) as gate:
            await asyncio.to_thread(gate.connect)
            await asyncio.to_thread(gate.publish, "site/gates/G00/event", gate_event(FLOOD))
        await until(lambda: f"G00#{FLOOD}" in access_ids(db), 10, "an event after the flood")
    return Flood(side, access_ids(db), max(inbox_sizes), published_in, handled_in)


@needs_mosquitto_pub
def test_a_device_flooding_with_garbage_is_survived_and_every_valid_event_stored_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=SIDE_LOGGER)
    # A site broker lets the gateway have 1000 unacknowledged messages (bench/mqtt_ingest.py).
    with run_broker("mosquitto", max_inflight=1000) as broker:
        flood = asyncio.run(flooded(tmp_path, broker))

    logged = [r for r in caplog.records if "reason=not_json" in r.getMessage()]
    print(
        f"{FLOOD} messages published in {flood.published_in_s:.2f} s "
        f"({FLOOD / flood.published_in_s:.0f}/s), handled in {flood.handled_in_s:.2f} s; "
        f"inbox max {flood.inbox_max}; rejections logged {len(logged)}"
    )
    valid = {f"G00#{seq}" for seq in range(FLOOD) if seq % 10 != 9}
    assert len(flood.stored) == len(set(flood.stored)), "an event is stored twice"
    assert set(flood.stored) == valid | {f"G00#{FLOOD}"}
    assert flood.side.rejected == Counter({("G00", "not_json"): FLOOD // 10})
    assert flood.side.broker.counters["disconnects"] == 0
    assert flood.side.broker.counters["handler_errors"] == 0
    assert 1 <= len(logged) <= FLOOD // 10 // 100 + 1  # the first, then every 100th


# Mosquitto 2.0.11 (Debian 12) does not hold its own max_inflight_messages while the
# subscriber acknowledges: its log shows thousands of unacknowledged PUBLISHes to a
# client allowed 20 (an MQTT 5 Receive Maximum is ignored the same way). The gateway
# bounds its inbox itself.
@needs_mosquitto_pub
def test_a_flood_waits_at_the_broker_not_in_the_gateways_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 100  # well below what the broker overshoots by (hundreds to thousands)
    monkeypatch.setattr(mqtt_client, "INBOX_LIMIT", limit)
    with run_broker("mosquitto", max_inflight=20) as broker:
        flood = asyncio.run(flooded(tmp_path, broker))
    print(f"inbox max {flood.inbox_max} (limit {limit})")
    assert len(flood.stored) == FLOOD - FLOOD // 10 + 1
    assert flood.inbox_max <= limit


# ---- 3. a stale retained event --------------------------------------------------------------


def test_a_retained_event_waiting_at_the_broker_is_not_journalled_but_the_next_one_is(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    db = tmp_path / "journal.db"
    with MqttTestClient(mqtt_broker) as gate:
        gate.connect()
        gate.publish("site/gates/G00/event", gate_event(1), retain=True)  # from the past
        gate.publish("site/gates/G00/status", b"online", retain=True)

    async def scenario() -> AccessSide:
        async with access_side(tmp_path, mqtt_broker) as side:
            assert await side.broker.wait_connected(10)
            # The retained messages come right after the SUBACK; a status is current.
            await until(lambda: side.rejected["G00", "stale_retained"] >= 1, 10, "stale one")
            await until(lambda: side.accepted["G00"] >= 1, 10, "the retained status")
            assert access_ids(db) == []
            with MqttTestClient(mqtt_broker) as gate:
                await asyncio.to_thread(gate.connect)
                await asyncio.to_thread(gate.publish, "site/gates/G00/event", gate_event(2))
            await until(lambda: bool(access_ids(db)), 10, "the fresh event journalled")
            return side

    side = asyncio.run(scenario())
    assert access_ids(db) == ["G00#2"]
    assert side.rejected == Counter({("G00", "stale_retained"): 1})
    assert "device.status" in event_kinds(db, "G00")
    assert side.health["G00"].state.value == "online"


# ---- 4. the broker is down when the gateway starts -------------------------------------------


def test_a_gateway_started_while_the_broker_is_down_connects_once_it_is_up(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    db = tmp_path / "journal.db"
    mqtt_broker.stop()

    async def scenario() -> tuple[AccessSide, float]:
        async with access_side(tmp_path, mqtt_broker) as side:
            assert not await side.broker.wait_connected(2)  # still trying, not given up
            await asyncio.to_thread(mqtt_broker.start)
            up = time.monotonic()
            assert await side.broker.wait_connected(15)
            await hears_gate(mqtt_broker, side)
            with MqttTestClient(mqtt_broker) as gate:
                await asyncio.to_thread(gate.connect)
                await asyncio.to_thread(gate.publish, "site/gates/G00/event", gate_event(7))
            await until(lambda: bool(access_ids(db)), 10, "the event journalled")
            return side, time.monotonic() - up

    side, took = asyncio.run(scenario())
    print(f"event journalled {took:.1f} s after the broker came up")
    assert took < 15
    assert access_ids(db) == ["G00#7"]
    assert side.broker.refused is None
