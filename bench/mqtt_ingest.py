"""MQTT ingest benchmark: gate events through a real broker into the journal.

20 simulated gate controllers (the generic JSON gate profile) publish QoS 1
events, each with its own sequence number. To measure the receiving side
alone, the messages are queued at the broker for an offline persistent
session (Mosquitto with ``max_queued_messages 0``, so it drops none), then
the subscriber connects and drains them:

* a bare paho subscriber (QoS 1, auto-acknowledge, counts only) gives the
  broker's own delivery rate;
* the gateway's access side (site-broker session, mapping by profile,
  journal commit, PUBACK after commit) gives ours.

The two alternate over ``--rounds`` rounds (bare first in odd rounds, gateway
first in even ones); each figure is the median over the rounds, the ratio the
median of each round's own ratio: on a shared virtual machine the CPU
available moves by a factor of two within a minute (steal time), so a single
bare run followed by a single gateway run compares two different machines.

Prints ``bare_subscriber_msgs_per_s``, ``mqtt_vs_bare`` and, last,
``mqtt_events_per_s``; fails if an event is missing or stored twice.

    .venv/bin/python bench/mqtt_ingest.py [--messages 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test harness runs the broker

from gateway.adapters.mqtt.side import AccessSide  # noqa: E402
from gateway.clock import Clock  # noqa: E402
from gateway.config import parse_site_config  # noqa: E402
from gateway.heap import settle_heap  # noqa: E402
from gateway.journal.store import Journal  # noqa: E402
from tests.harness.broker import Broker, run_broker  # noqa: E402

GATES = 20


def _client(broker: Broker, client_id: str, clean: bool) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    client.username_pw_set(broker.username, broker.password)
    client.max_inflight_messages_set(100)
    return client


def subscribe_then_leave(broker: Broker, client_id: str) -> None:
    """Create the persistent session and its subscription, then go offline."""
    client = _client(broker, client_id, clean=False)
    done = threading.Event()
    client.on_subscribe = lambda *_: done.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe("site/gates/#", qos=1)
    done.wait(10)
    client.disconnect()
    client.loop_stop()


def publish(broker: Broker, count: int, tag: str) -> None:
    """``count`` gate events spread over the gates, all acknowledged by the broker."""
    client = _client(broker, f"bench-publisher-{tag}", clean=True)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    last = None
    for n in range(count):
        gate = n % GATES
        body = {
            "type": "granted" if n % 7 else "denied",
            "card": f"{100000 + n:08d}",
            "door": 1,
            "dir": 1 + n % 2,
            "reason": "expired",
            "seq": n // GATES,
            "ts": "2026-11-23T08:00:00+08:00",
        }
        last = client.publish(f"site/gates/G{gate:02d}/event", json.dumps(body), qos=1)
    assert last is not None
    last.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def bare_rate(broker: Broker, count: int, tag: str) -> tuple[float, float]:
    subscribe_then_leave(broker, f"bench-bare-{tag}")
    publish(broker, count, "bare")
    client = _client(broker, f"bench-bare-{tag}", clean=False)
    got = 0
    first: list[float] = []
    finished = threading.Event()

    def on_message(*_: object) -> None:
        nonlocal got
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        got += 1
        if got == count:
            finished.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not finished.wait(120):
        raise SystemExit(f"bare subscriber got {got} of {count}")
    elapsed = time.perf_counter() - first[0]
    cpu = time.process_time() - first[1]
    client.disconnect()
    client.loop_stop()
    return count / elapsed, cpu / count * 1e6


def site_text(broker: Broker, client_id: str) -> str:
    points = "".join(
        f'\n[[devices.access_points]]\nid = "G{g:02d}"\nkind = "turnstile"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "site/gates/G{g:02d}"\n'
        for g in range(GATES)
    )
    return (
        '[site]\nid = "bench"\nname = "bench"\nprofiles_dir = "profiles"\n'
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
        f'client_id = "{client_id}"\n' + points
    )


async def gateway_rate(
    broker: Broker, count: int, directory: Path, tag: str
) -> tuple[float, float]:
    shutil.copytree(ROOT / "config" / "profiles", directory / "profiles")
    site = directory / "site.toml"
    client_id = f"bench-gateway-{tag}"
    site.write_text(site_text(broker, client_id), encoding="utf-8")
    config = parse_site_config(site.read_text(encoding="utf-8"), site)
    subscribe_then_leave(broker, client_id)
    await asyncio.to_thread(publish, broker, count, "gateway")
    journal = await Journal.open(directory / "journal.db")
    side = AccessSide.build(config, journal, Clock())
    settle_heap()  # as `gateway run` does once it is built
    task = asyncio.create_task(side.broker.run())
    started = cpu_started = None
    try:
        while sum(side.accepted.values()) < count:
            if started is None and side.broker.counters["received"]:
                started, cpu_started = time.perf_counter(), time.process_time()
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        assert started is not None and cpu_started is not None
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await journal.close()
    conn = sqlite3.connect(directory / "journal.db")
    stored, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT id) FROM events WHERE kind LIKE 'access.%'"
    ).fetchone()
    conn.close()
    if stored != count or distinct != count:
        raise SystemExit(f"journal holds {stored} access events ({distinct} distinct) of {count}")
    return count / elapsed, cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=1000, help="broker max_inflight_messages")
    args = parser.parse_args()
    # A site broker should let a subscriber have more than Mosquitto's default 20
    # unacknowledged messages: the gateway acknowledges after each group commit.
    bares: list[float] = []
    ours: list[float] = []
    ratios: list[float] = []
    cpu: dict[str, list[float]] = {"bare": [], "gateway": []}
    with run_broker(max_inflight=args.inflight) as broker:
        print(
            f"broker: {broker.kind} (max_inflight_messages {args.inflight}); "
            f"cores: {os.cpu_count()}; messages: {args.messages} per side and round"
        )
        for round_no in range(args.rounds):
            tag = str(round_no)
            for side in ("bare", "gateway") if round_no % 2 == 0 else ("gateway", "bare"):
                if side == "bare":
                    rate, cpu_us = bare_rate(broker, args.messages, tag)
                    bares.append(rate)
                else:
                    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
                        rate, cpu_us = asyncio.run(
                            gateway_rate(broker, args.messages, Path(tmp), tag)
                        )
                    ours.append(rate)
                cpu[side].append(cpu_us)
            ratios.append(ours[-1] / bares[-1])
            print(
                f"round {round_no + 1}: bare {bares[-1]:.0f} msgs/s, gateway {ours[-1]:.0f} "
                f"events/s, ratio {ratios[-1]:.2f}; CPU per message: "
                f"bare {cpu['bare'][-1]:.1f} us, gateway {cpu['gateway'][-1]:.1f} us",
                flush=True,
            )
    print(f"bare_cpu_us_per_msg: {statistics.median(cpu['bare']):.1f}")
    print(f"gateway_cpu_us_per_event: {statistics.median(cpu['gateway']):.1f}")
    print(f"bare_subscriber_msgs_per_s: {statistics.median(bares):.0f}")
    print(f"mqtt_vs_bare: {statistics.median(ratios):.2f}")
    print(f"mqtt_events_per_s: {statistics.median(ours):.0f}")


if __name__ == "__main__":
    main()
