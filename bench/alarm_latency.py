"""Alarm latency: a door forced at a gate → the alarm on the live stream.

A real broker, ``gateway run`` as its own process, 100 gate controllers (the
generic JSON gate profile). A background publisher keeps 1,000 gate events a
second flowing through the broker into the journal. The injector then
publishes one "door forced" at a time on another gate and measures until the
alarm for that gate arrives on ``/api/v1/alarms/stream`` (SSE) — the whole
path: broker → MQTT adapter → journal commit → alarm engine → alarm commit →
stream.

Prints ``background_events_per_s``, ``alarm_latency_p50_ms`` and, last,
``alarm_latency_p99_ms`` (target ≤ 100 ms).

    .venv/bin/python bench/alarm_latency.py [--alarms 200] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.auth import hash_token  # noqa: E402
from gateway.sim.broker import Broker, run_broker  # noqa: E402
from gateway.sim.ports import free_tcp_port  # noqa: E402

BACKGROUND_GATES = 20
ALARM_GATES = 80
TOKEN = "bench-alarm-latency-token"


def site_text(broker: Broker, port: int) -> str:
    gates = "".join(
        f'\n[[devices.access_points]]\nid = "G{g:03d}"\nkind = "turnstile"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "site/gates/G{g:03d}"\n'
        for g in range(BACKGROUND_GATES + ALARM_GATES)
    )
    return (
        '[site]\nid = "bench"\nname = "bench"\nprofiles_dir = "profiles"\n'
        '\n[journal]\npath = "journal.db"\n'
        f'\n[api]\nhost = "127.0.0.1"\nport = {port}\n'
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
        f'\n[[users]]\nname = "guard"\nrole = "guard"\ntoken_sha256 = "{hash_token(TOKEN)}"\n'
        + gates
    )


def client(broker: Broker, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    c.username_pw_set(broker.username, broker.password)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def background(broker: Broker, rate: int, stop: threading.Event, sent: list[int]) -> None:
    """``rate`` gate events a second, in 10 ms slices."""
    c = client(broker, "bench-background")
    n = 0
    started = time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - started) * rate)
        while n < due:
            gate = n % BACKGROUND_GATES
            body = {"type": "granted", "card": f"{n:08d}", "door": 1, "dir": 1, "seq": n}
            c.publish(f"site/gates/G{gate:03d}/event", json.dumps(body), qos=1)
            n += 1
        time.sleep(0.01)
    sent.append(n)
    c.disconnect()
    c.loop_stop()


def listen(url: str, arrivals: queue.Queue[tuple[str, float]], ready: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    stream = httpx.stream("GET", f"{url}/api/v1/alarms/stream", headers=headers, timeout=None)
    try:
        with stream as r:
            kind = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    ready.set()
                    if kind == "alarm":
                        alarm_id = json.loads(line[6:])["alarm"]["alarm_id"]
                        arrivals.put((alarm_id, time.perf_counter()))
    except httpx.TransportError:
        pass  # the gateway stopped at the end of the run


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("gateway not ready in 30 s")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alarms", type=int, default=200)
    parser.add_argument("--rate", type=int, default=1000, help="background gate events per second")
    args = parser.parse_args()
    with (
        run_broker(max_inflight=1000) as broker,
        tempfile.TemporaryDirectory(prefix="bench-alarm-") as tmp,
    ):
        directory = Path(tmp)
        shutil.copytree(ROOT / "config" / "profiles", directory / "profiles")
        port = free_tcp_port()
        (directory / "site.toml").write_text(site_text(broker, port), encoding="utf-8")
        url = f"http://127.0.0.1:{port}"
        log = (directory / "gateway.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(directory / "site.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stop = threading.Event()
        sent: list[int] = []
        try:
            wait_ready(url, proc)
            arrivals: queue.Queue[tuple[str, float]] = queue.Queue()
            ready = threading.Event()
            threading.Thread(target=listen, args=(url, arrivals, ready), daemon=True).start()
            if not ready.wait(10):
                raise SystemExit("no snapshot on the alarm stream")
            load = threading.Thread(target=background, args=(broker, args.rate, stop, sent))
            load.start()
            time.sleep(3)  # the background load reaches its steady state
            injector = client(broker, "bench-injector")
            latencies: list[float] = []
            load_started = time.perf_counter()
            for n in range(args.alarms):
                gate = BACKGROUND_GATES + n % ALARM_GATES
                alarm_id = f"door-forced:G{gate:03d}"
                body = {"type": "forced", "door": 1, "seq": 1_000_000 + n}
                published = time.perf_counter()
                injector.publish(f"site/gates/G{gate:03d}/event", json.dumps(body), qos=1)
                deadline = published + 5
                while True:
                    try:
                        got, at = arrivals.get(timeout=max(0.0, deadline - time.perf_counter()))
                    except queue.Empty:
                        raise SystemExit(f"alarm {alarm_id} not on the stream in 5 s") from None
                    if got == alarm_id:
                        latencies.append((at - published) * 1000)
                        break
                time.sleep(0.05)
            elapsed = time.perf_counter() - load_started
            stop.set()
            load.join()
            injector.disconnect()
            injector.loop_stop()
        finally:
            stop.set()
            proc.terminate()
            proc.wait(20)
            log.close()
    background_rate = sent[0] / (elapsed + 3) if sent else 0.0
    print(f"broker: {broker.kind}; cores: {os.cpu_count()}; alarms: {len(latencies)}")
    print(f"background_events_per_s: {background_rate:.0f}")
    print(f"alarm_latency_max_ms: {max(latencies):.1f}")
    print(f"alarm_latency_p50_ms: {percentile(latencies, 50):.1f}")
    print(f"alarm_latency_p99_ms: {percentile(latencies, 99):.1f}")


if __name__ == "__main__":
    main()
