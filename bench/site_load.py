"""Reference-site polling load: the gateway's CPU for 3,000+ meters at 15 minutes.

The simulated reference compound (gateway.sim.meters: all 28 towers and the site mains,
3,054 meters on 86 links) runs in a child process. The gateway (the
whole service: pollers, meter book, journal, API) polls every meter once
(household meters every 900 s, mains every 60 s). Its own CPU for the first
full pass, spread over the 900 s the pass stands for, is the steady load.
Prints the pass time and last ``site_poll_cpu_pct_of_core: N``.

    .venv/bin/python bench/site_load.py [--buildings 28]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from gateway.app import GatewayService
from gateway.config import load_site_config
from gateway.profiles import load_profiles
from gateway.sim.meters import MeterFleet, reference_slice, shipped_profiles_dir

HOUSEHOLD_S, MAIN_S = 900.0, 60.0


def run_fleet(
    buildings: int, ports_out: multiprocessing.Queue, stop: multiprocessing.Event
) -> None:
    layout = reference_slice(buildings, household_poll_s=HOUSEHOLD_S, main_poll_s=MAIN_S)
    fleet = MeterFleet.for_layout(layout, load_profiles(shipped_profiles_dir()))
    fleet.start()
    ports_out.put(fleet.ports())
    stop.wait()
    fleet.stop()


async def measure(site: Path, meters: int) -> tuple[float, float, float]:
    service = GatewayService(load_site_config(site))
    task = asyncio.create_task(service.run())
    while service.modbus is None:
        await asyncio.sleep(0.05)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while (
        sum(d.health.counters["ok"] > 0 for p in service.modbus.pollers for d in p.devices.values())
        < meters
    ):
        await asyncio.sleep(0.1)
    pass_cpu, pass_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    cpu1 = time.process_time()
    await asyncio.sleep(10)  # between passes: only mains, I/O and heartbeats
    idle_cpu = (time.process_time() - cpu1) / 10
    service.stop.set()
    await task
    return pass_cpu, pass_wall, idle_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buildings", type=int, default=28)
    args = parser.parse_args()
    layout = reference_slice(args.buildings, household_poll_s=HOUSEHOLD_S, main_poll_s=MAIN_S)
    ports_q: multiprocessing.Queue = multiprocessing.Queue()
    stop = multiprocessing.Event()
    child = multiprocessing.Process(target=run_fleet, args=(args.buildings, ports_q, stop))
    child.start()
    try:
        ports = ports_q.get(timeout=60)
        with tempfile.TemporaryDirectory(prefix="gw-site-") as tmp:
            (Path(tmp) / "profiles").mkdir()
            site = Path(tmp) / "site.toml"
            extra = '[api]\nhost = "127.0.0.1"\nport = 0\n'
            site.write_text(
                layout.site_toml(ports, profiles_dir=shipped_profiles_dir(), extra=extra), "utf-8"
            )
            config = load_site_config(site)
            meters = len(config.devices.meters) + len(config.devices.io_modules)
            pass_cpu, pass_wall, idle = asyncio.run(measure(site, meters))
    finally:
        stop.set()
        child.join(30)
    steady = pass_cpu / HOUSEHOLD_S + idle
    print(f"cores: {os.cpu_count()}  devices: {meters}  links: {len(config.links)}")
    print(f"first_pass_s: {pass_wall:.1f}  first_pass_cpu_s: {pass_cpu:.2f}")
    print(f"between_passes_cpu_pct: {idle * 100:.2f}")
    print(f"site_poll_cpu_pct_of_core: {steady * 100:.2f}")


if __name__ == "__main__":
    main()
