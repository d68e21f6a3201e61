"""Sync drain benchmark: a week of WAN loss on a large site, delivered at once.

1,000,000 meter readings wait in the outbox (queued by the feeder from
``meter.reading`` events, as in service); the gateway's sender drains them to
the reference central receiver (``gateway central-sim``, its own process) over
loopback in batches of 1,000. The drain runs in a child process so its peak
RSS is the sender's own, sampled throughout. Prints ``drain_seconds``,
``gateway_peak_rss_mb``, ``central_stored`` and, last,
``sync_drain_readings_per_s``.

    .venv/bin/python bench/sync_drain.py [--readings 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.clock import Clock, to_rfc3339, utc_now
from gateway.journal.store import Journal
from gateway.meters.readings import CounterReading, reading_event, reading_id
from gateway.sync.feeder import feed
from gateway.sync.http import HttpTransport
from gateway.sync.sender import SenderSettings, SyncSender

SITE = "bench-site"
TOKEN = "bench-token"
ZONE = ZoneInfo("Asia/Shanghai")
METERS = 3000


async def fill(path: Path, readings: int) -> None:
    """``readings`` 15-minute readings of 3,000 meters, fed into the outbox."""
    journal = await Journal.open(path)
    start = datetime(2026, 11, 16, tzinfo=ZONE)
    try:
        chunk = []
        for n in range(readings):
            meter, slot = f"B{n % METERS:04d}-E", n // METERS
            at = start + timedelta(minutes=15 * slot)
            rid = reading_id(meter, "import_kwh", at, ZONE)
            counter = CounterReading("import_kwh", 1000.0 + slot * 0.25, "kWh", "good", (), rid)
            chunk.append(
                reading_event(
                    meter=meter,
                    utility="electricity",
                    read_at=at,
                    zone=ZONE,
                    counters=[counter],
                    instant={},
                    source="modbus",
                )
            )
            if len(chunk) == 5000:
                await journal.submit_many(chunk)
                chunk = []
        await journal.submit_many(chunk)
        now = to_rfc3339(utc_now())
        while await journal.write(lambda conn: feed(conn, now, limit=20_000)):
            pass
    finally:
        await journal.close()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def drain(path: Path, url: str) -> dict[str, float]:
    """The child: run the sender until the outbox is empty."""
    journal = await Journal.open(path)
    transport = HttpTransport(url, SITE, TOKEN)
    sender = SyncSender(journal, transport, Clock(), SenderSettings(idle_poll_s=0.05))
    peak = rss_mb()
    started = time.perf_counter()
    task = asyncio.create_task(sender.run())
    try:
        while True:
            await asyncio.sleep(0.25)
            peak = max(peak, rss_mb())
            left = await journal.query(
                lambda c: c.execute("SELECT count(*) FROM outbox").fetchone()[0]
            )
            if task.done():
                task.result()
            if left == 0:
                break
        seconds = time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.close()
        await journal.close()
    peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"seconds": seconds, "peak_rss_mb": peak}


def start_central(directory: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "central-sim",
            "--db",
            str(directory / "central.db"),
            "--site-id",
            SITE,
            "--token",
            TOKEN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"central-sim did not start: {line!r}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, match.group(1)


def central_stored(url: str) -> int:
    import httpx

    stats = httpx.get(f"{url}/_sim/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    return int(stats["readings"]["stored"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("JOURNAL", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(drain(Path(args.child[0]), args.child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        directory = Path(tmp)
        journal = directory / "journal.db"
        t0 = time.perf_counter()
        asyncio.run(fill(journal, args.readings))
        print(f"backlog_built_s: {time.perf_counter() - t0:.1f} ({args.readings} readings)")
        central, url = start_central(directory)
        try:
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(journal), url],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
            stored = central_stored(url)
        finally:
            central.terminate()
            central.wait(10)
    print(f"cores: {os.cpu_count()}")
    print(f"drain_seconds: {result['seconds']:.1f}")
    print(f"gateway_peak_rss_mb: {result['peak_rss_mb']:.0f}")
    print(f"central_stored: {stored}")
    if stored != args.readings:
        raise SystemExit(f"central stored {stored} of {args.readings} readings")
    print(f"sync_drain_readings_per_s: {args.readings / result['seconds']:.0f}")


if __name__ == "__main__":
    main()
