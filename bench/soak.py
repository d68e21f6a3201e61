"""Soak: the reference site's whole load on ``gateway run`` — CPU and memory over time.

The full reference compound (../shared/reference-site) at morning rush hour,
each part in its own process so the gateway's figures are its own:

* meters: all 28 towers and the site mains (gateway.sim.meters, 3,054 meters
  on 86 Modbus TCP links) in a child process; households read every 900 s,
  mains every 60 s;
* gates and barriers: the site's 40 access points (4 turnstiles, 30 lobby
  doors, 6 plate-camera barriers; gateway.sim.gates) on a real MQTT broker,
  with the traffic model held at 08:00 (its morning peak) and the car parks
  part-filled overnight, so that cars can leave;
* patrols: a guard's phone posts a signed QR scan every 10 s
  (``POST /api/v1/patrol/scans``), walking all 33 checkpoints in turn;
* sync: the reference central receiver (``gateway central-sim``) takes the
  readings, heartbeats and incidents.

``gateway run`` is sampled every ``--sample-s`` from /proc (VmRSS; utime +
stime). The ``--warmup-minutes`` (start-up, the first pass over all meters)
are left out; over the measured window it prints the load that went through
(journalled readings and gate events, scans, readings central stored), then
``soak_cpu_pct`` (CPU seconds per wall second × 100: % of one core),
``soak_rss_mb`` (median RSS of the window's second half) and, last,
``soak_rss_slope_mb_per_h`` (least-squares slope of RSS over the window).
Targets: RSS ≤ 60 MB, slope < 1 MB/h, CPU < 25 % of one core. The gateway
reads all 3,054 meters in its first seconds, then the households again every
900 s after (a burst of a few seconds each time): only a run that ends more than
15 min after the start (warm-up included) measures a household pass, e.g.
``--minutes 30`` holds two. A slope needs hours to mean much.

    .venv/bin/python bench/soak.py [--minutes 10] [--warmup-minutes 2] [--sample-s 5]
                                   [--household-poll-s 900]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from gateway.auth import hash_token
from gateway.profiles import load_profiles
from gateway.sim.broker import Broker, run_broker
from gateway.sim.gates import GateTraffic, SimBarrier, SimGate
from gateway.sim.meters import MeterFleet, reference_slice, shipped_profiles_dir
from gateway.sim.ports import free_tcp_port
from gateway.web.patrol import qr_signature

BUILDINGS = 28
HOUSEHOLD_S, MAIN_S = 900.0, 60.0
ZONE = ZoneInfo("Asia/Shanghai")
PEOPLE_PER_H = 3000.0  # gate and door passages an hour at the peak: ~1,500 residents out
CARS_PER_H = 400.0  # barrier passages an hour at the peak (671 spaces)
TRAFFIC_TICK_S = 5.0
KEEPALIVE_EVERY = 2  # ticks: the cameras' 10 s keep-alive
PARKED_OVERNIGHT = 150
SCAN_EVERY_S = 10.0

TURNSTILES = [f"{side}-GATE-P{n}" for side in "NS" for n in (1, 2)]
DOORS = [f"B{b:02d}-DOOR" for b in range(1, BUILDINGS + 1)] + ["M01-DOOR", "C01-DOOR"]
GATES = [SimGate(g, f"site/gates/{g}") for g in TURNSTILES + DOORS]
BARRIERS = [
    SimBarrier(f"{side}-BAR-{way.upper()}", f"device/{side}-BAR-{way.upper()}", lot, way)
    for side, lot in (("N", "SURFACE"), ("S", "SURFACE"), ("G", "UNDERGROUND"))
    for way in ("in", "out")
]
CHECKPOINTS = [f"CP{n:02d}" for n in range(1, 34)]
ROUTES = {  # patrol_routes.csv
    "NIGHT": ("free", CHECKPOINTS),
    "DAY": ("free", CHECKPOINTS[:11] + CHECKPOINTS[19:]),
    "GARAGE": ("strict", CHECKPOINTS[6:10]),
}
GATE_KINDS = "kind LIKE 'access.%' OR kind LIKE 'door.%' OR kind LIKE 'vehicle.%'"


@dataclass(frozen=True)
class Sample:
    t: float  # monotonic seconds
    rss_mb: float
    cpu_s: float


@dataclass(frozen=True)
class Tally:
    """Cumulative counts at one moment: what the load had put through by then."""

    seq: int
    readings: int
    gate_events: int
    scans: int
    synced: int
    published: int
    posted: int


def run_fleet(
    ports_out: multiprocessing.Queue[dict[str, int]], stop: ProcessEvent, household_s: float
) -> None:
    """The child process: the reference meters until ``stop``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it, also on Ctrl-C
    layout = reference_slice(BUILDINGS, household_poll_s=household_s, main_poll_s=MAIN_S)
    fleet = MeterFleet.for_layout(layout, load_profiles(shipped_profiles_dir()))
    fleet.start()
    ports_out.put(fleet.ports())
    stop.wait()
    fleet.stop()


def start_fleet(stack: contextlib.ExitStack, household_s: float) -> dict[str, int]:
    ports_q: multiprocessing.Queue[dict[str, int]] = multiprocessing.Queue()
    stop = multiprocessing.Event()
    child = multiprocessing.Process(target=run_fleet, args=(ports_q, stop, household_s))
    child.start()

    def finish() -> None:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()

    stack.callback(finish)
    return ports_q.get(timeout=120)


def start_process(stack: contextlib.ExitStack, args: list[str], log: Path) -> subprocess.Popen[str]:
    """``python -m gateway.cli ARGS``, output to ``log``; terminated (or killed) on exit."""
    out = stack.enter_context(log.open("w", encoding="utf-8"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def finish() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(finish)
    return proc


def start_central(stack: contextlib.ExitStack, directory: Path, site_id: str, token: str) -> str:
    """The reference central receiver in its own process; its URL."""
    log = directory / "central.log"
    args = ["central-sim", "--db", str(directory / "central.db"), "--site-id", site_id]
    proc = start_process(stack, [*args, "--token", token, "--port", "0"], log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"central-sim listening on (\S+)", log.read_text(encoding="utf-8"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"central-sim did not start:\n{log.read_text(encoding='utf-8')}")


def site_extra(broker: Broker, port: int, central: str, token: str, secret: str) -> str:
    """Everything of the site file but the meters: API, users, sync, patrol, gates, lots."""
    checkpoints = "".join(
        f'\n[[patrol.checkpoints]]\nid = "{cp}"\nname = "{cp}"\n' for cp in CHECKPOINTS
    )
    routes = "".join(
        f'\n[[patrol.routes]]\nid = "{rid}"\nname = "{rid}"\norder = "{order}"\nmin_gap_s = 5\n'
        "stops = [" + ", ".join(f'{{ checkpoint = "{cp}" }}' for cp in stops) + "]\n"
        for rid, (order, stops) in ROUTES.items()
    )
    points = "".join(
        f'\n[[devices.access_points]]\nid = "{g.id}"\n'
        f'kind = "{"turnstile" if g.id in TURNSTILES else "door"}"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "{g.topic_prefix}"\n'
        for g in GATES
    ) + "".join(
        f'\n[[devices.access_points]]\nid = "{b.id}"\nkind = "barrier"\n'
        f'profile = "lpr-camera-barrier"\ntopic_prefix = "{b.topic_prefix}"\nlot = "{b.lot}"\n'
        for b in BARRIERS
    )
    return (
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n'
        f'\n[[users]]\nname = "guard"\nrole = "guard"\ntoken_sha256 = "{hash_token(token)}"\n'
        f'\n[sync]\nbase_url = "{central}"\ntoken = "{token}"\n'
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
        # The soak's guard scans every 10 s, far faster than a real round: no burst flags.
        f'\n[patrol]\nsigning_secret = "{secret}"\nburst_scans = 1000\n'
        + checkpoints
        + routes
        + points
        + '\n[[parking.lots]]\nid = "SURFACE"\nname = "地面停车场"\nspaces = 125\n'
        "classes = { temporary = 40, monthly = 85 }\n"
        '\n[[parking.lots]]\nid = "UNDERGROUND"\nname = "地下停车场"\nspaces = 546\n'
        "classes = { temporary = 46, monthly = 500 }\n"
    )


def wait_ready(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"gateway not ready in 120 s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def rush_hour() -> datetime:
    """Now at 08:00 site time (seconds kept): the traffic model's morning peak."""
    return datetime.now(ZONE).replace(hour=8, minute=0)


def drive_gates(traffic: GateTraffic, stop: threading.Event) -> None:
    """Rush-hour traffic in real time: each tick is ``TRAFFIC_TICK_S`` of the peak hour."""
    ticks = 0
    while not stop.wait(TRAFFIC_TICK_S):
        now = rush_hour()
        share = TRAFFIC_TICK_S / 60  # minute() publishes a minute of traffic
        traffic.minute(now, PEOPLE_PER_H * share, CARS_PER_H * share)
        ticks += 1
        if ticks % KEEPALIVE_EVERY == 0:
            traffic.keep_alives(now)


def walk_rounds(
    url: str, token: str, secret: str, stop: threading.Event, posted: list[int]
) -> None:
    """A guard's phone: a signed QR scan of the next checkpoint every ``SCAN_EVERY_S``;
    ``posted`` gets each answer's status (0: no answer)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        n = 0
        while not stop.wait(SCAN_EVERY_S):
            checkpoint = CHECKPOINTS[n % len(CHECKPOINTS)]
            n += 1
            now = datetime.now(UTC).isoformat()
            body = {
                "scan_id": uuid.uuid4().hex,
                "method": "qr",
                "checkpoint": checkpoint,
                "sig": qr_signature(secret, checkpoint),
                "scanned_at": now,
                "sent_at": now,
            }
            try:
                posted.append(client.post("/api/v1/patrol/scans", json=body).status_code)
            except httpx.TransportError:
                posted.append(0)


def read_proc(pid: int) -> tuple[float, float]:
    """(RSS in MB, user + system CPU seconds) of process ``pid``."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return rss_kb / 1024, ticks / os.sysconf("SC_CLK_TCK")


def sample_until(
    proc: subprocess.Popen[str], log: Path, until: float, every: float, started: float
) -> list[Sample]:
    """Samples of the gateway every ``every`` s until monotonic ``until``, and a line
    with RSS and CPU each minute since ``started``."""
    samples: list[Sample] = []
    next_at = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited {proc.returncode}:\n{tail(log)}")
        rss, cpu = read_proc(proc.pid)
        now = Sample(time.monotonic(), rss, cpu)
        if samples and (now.t - started) // 60 > (samples[-1].t - started) // 60:
            ago = next((s for s in samples if s.t >= now.t - 60), samples[0])
            pct = (now.cpu_s - ago.cpu_s) / (now.t - ago.t) * 100
            print(
                f"  [{(now.t - started) / 60:4.1f} min] rss {rss:.1f} MB, cpu {pct:.1f} % "
                "of a core over the last minute",
                flush=True,
            )
        samples.append(now)
        if now.t >= until:
            return samples
        next_at += every
        time.sleep(max(0.0, min(next_at, until) - time.monotonic()))


def tally(
    journal: Path, central: str, token: str, traffic: GateTraffic, posted: list[int]
) -> Tally:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        seq, readings, gates, scans = conn.execute(
            "SELECT coalesce(max(seq), 0), coalesce(sum(kind = 'meter.reading'), 0), "
            f"coalesce(sum({GATE_KINDS}), 0), coalesce(sum(kind = 'patrol.scan'), 0) FROM events"
        ).fetchone()
    finally:
        conn.close()
    stats = httpx.get(
        f"{central}/_sim/stats", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    return Tally(
        int(seq),
        int(readings),
        int(gates),
        int(scans),
        int(stats["readings"]["stored"]),
        traffic.published,
        len(posted),
    )


def slope_per_hour(samples: list[Sample]) -> float:
    """Least-squares slope of RSS (MB) over time, in MB per hour."""
    hours = [(s.t - samples[0].t) / 3600 for s in samples]
    mean_h = statistics.fmean(hours)
    mean_mb = statistics.fmean(s.rss_mb for s in samples)
    num = sum((h - mean_h) * (s.rss_mb - mean_mb) for h, s in zip(hours, samples, strict=True))
    den = sum((h - mean_h) ** 2 for h in hours)
    return num / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup-minutes", type=float, default=2.0, help="left out")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument(
        "--household-poll-s",
        type=float,
        default=HOUSEHOLD_S,
        help="households' poll interval (shorter: more passes, e.g. to see memory settle sooner)",
    )
    args = parser.parse_args()
    token = secrets.token_urlsafe(24)
    secret = secrets.token_hex(16)
    layout = reference_slice(BUILDINGS, household_poll_s=args.household_poll_s, main_poll_s=MAIN_S)
    posted: list[int] = []
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-soak-")))
        ports = start_fleet(stack, args.household_poll_s)
        broker = stack.enter_context(run_broker(max_inflight=1000))
        central = start_central(stack, directory, layout.site_id, token)
        port = free_tcp_port()
        site = directory / "site.toml"
        extra = site_extra(broker, port, central, token, secret)
        site.write_text(
            layout.site_toml(ports, profiles_dir=shipped_profiles_dir(), extra=extra), "utf-8"
        )
        url = f"http://127.0.0.1:{port}"
        log = directory / "gateway.log"
        gateway = start_process(stack, ["run", "-c", str(site)], log)
        started = time.monotonic()
        wait_ready(url, gateway, log)
        print(f"gateway ready in {time.monotonic() - started:.1f} s", flush=True)

        traffic = GateTraffic(
            broker.host, broker.port, broker.username, broker.password, GATES, BARRIERS, seed=1
        )
        traffic.start()
        stack.callback(traffic.stop)
        overnight = rush_hour() - timedelta(hours=10)  # evening arrivals fill the car parks
        while sum(traffic.cars.values()) < PARKED_OVERNIGHT:
            traffic.vehicle(overnight)
        threads = [
            threading.Thread(target=drive_gates, args=(traffic, stop)),
            threading.Thread(target=walk_rounds, args=(url, token, secret, stop, posted)),
        ]
        for thread in threads:
            thread.start()
            stack.callback(thread.join)
        stack.callback(stop.set)  # runs before the joins

        warmup_end = started + args.warmup_minutes * 60
        sample_until(gateway, log, warmup_end, args.sample_s, started)
        before = tally(directory / "journal.db", central, token, traffic, posted)
        window_end = warmup_end + args.minutes * 60
        samples = sample_until(gateway, log, window_end, args.sample_s, started)
        after = tally(directory / "journal.db", central, token, traffic, posted)
    first, last = samples[0], samples[-1]
    wall = last.t - first.t
    cpu_pct = (last.cpu_s - first.cpu_s) / wall * 100
    steady = statistics.median(s.rss_mb for s in samples if s.t >= first.t + wall / 2)
    print(
        f"cores: {os.cpu_count()}  broker: {broker.kind}  meters: {len(layout.meters)} on "
        f"{len(layout.links)} links  access points: {len(GATES) + len(BARRIERS)}  "
        f"checkpoints: {len(CHECKPOINTS)}"
    )
    print(
        f"window: {wall / 60:.1f} min after {args.warmup_minutes:g} min warm-up, "
        f"{len(samples)} samples every {args.sample_s:g} s"
    )
    print(
        f"load in the window: {after.readings - before.readings} meter readings journalled, "
        f"{after.synced - before.synced} stored by central; "
        f"{after.gate_events - before.gate_events} gate and barrier events journalled "
        f"({after.published - before.published} messages published); "
        f"{after.scans - before.scans} patrol scans journalled "
        f"({after.posted - before.posted} posted); {after.seq - before.seq} events in all"
    )
    print(f"scan answers (status: count): {dict(sorted(Counter(posted).items()))}")
    print(f"rss_min_mb: {min(s.rss_mb for s in samples):.1f}")
    print(f"rss_max_mb: {max(s.rss_mb for s in samples):.1f}")
    print(f"soak_cpu_pct: {cpu_pct:.1f}")
    print(f"soak_rss_mb: {steady:.1f}")
    print(f"soak_rss_slope_mb_per_h: {slope_per_hour(samples):.2f}")


if __name__ == "__main__":
    main()
