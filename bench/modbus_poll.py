"""Modbus polling benchmark: the gateway's read path against a bare pymodbus loop.

A pymodbus TCP server runs in a separate process (so its CPU is not counted)
with ``--meters`` simulated SDM120 meters spread over ``--links`` ports. Then,
in this process:

1. the raw ceiling: one bare ``AsyncModbusTcpClient`` per link reading the same
   register blocks in a tight loop;
2. the gateway: one ``LinkPoller`` per link (link lock, retries, decode,
   health, the meter book's validation and the journal's group commit), every
   meter always due.

The two alternate over ``--rounds`` rounds (raw first in odd rounds, gateway
first in even ones) and each figure is the median over the rounds: on a shared
virtual machine the CPU available moves by a factor of two within a minute
(steal time), so one raw window followed by one gateway window compares two
different machines. The ratio is the median of each round's own ratio.

Prints ``raw_client_reads_per_s``, ``gateway_cpu_ms_per_read`` (this process's
CPU per Modbus read), ``modbus_vs_raw_client`` and last ``modbus_reads_per_s``.

    .venv/bin/python bench/modbus_poll.py [--meters 200] [--links 4] [--seconds 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from pymodbus.client import AsyncModbusTcpClient

from gateway.adapters.modbus.decode import encode_value
from gateway.adapters.modbus.link import ModbusLink
from gateway.adapters.modbus.poller import PRIORITY_BILLED, LinkPoller, Polled
from gateway.clock import Clock
from gateway.config import ModbusTcpLink
from gateway.health import DeviceHealth
from gateway.heap import settle_heap
from gateway.journal.store import Journal
from gateway.meters.book import MeterBook, MeterInfo
from gateway.profiles import Profile, load_profile

PROFILE_PATH = Path(__file__).parent.parent / "config" / "profiles" / "eastron-sdm120.toml"


def serve(ports: list[int], units: int, ready: multiprocessing.synchronize.Event) -> None:
    """The meters: one pymodbus server per port, ``units`` meters on each."""
    import logging

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    profile = load_profile(PROFILE_PATH)
    registers = [0] * 400
    for spec in profile.values:
        value = 230.1 if not spec.counter else 1234.5
        registers[spec.address : spec.end] = encode_value(spec, value)

    async def main() -> None:
        servers, tasks = [], []
        for port in ports:
            devices = [
                SimDevice(
                    unit,
                    simdata=(
                        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                        [SimData(0, values=registers, datatype=DataType.REGISTERS)],
                        [SimData(0, values=registers, datatype=DataType.REGISTERS)],
                    ),
                )
                for unit in range(1, units + 1)
            ]
            server = ModbusTcpServer(devices, address=("127.0.0.1", port))
            servers.append(server)
            tasks.append(asyncio.create_task(server.serve_forever()))
        await asyncio.sleep(0.5)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


async def raw_client(
    ports: list[int], units: int, profile: Profile, seconds: float
) -> tuple[float, float]:
    blocks = profile.blocks()
    reads = 0

    async def loop(port: int) -> None:
        nonlocal reads
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        deadline = time.perf_counter() + seconds
        unit = 0
        while time.perf_counter() < deadline:
            unit = unit % units + 1
            for block in blocks:
                await client.read_input_registers(block.address, count=block.count, device_id=unit)
                reads += 1
        client.close()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(port) for port in ports))
    cpu = time.process_time() - cpu_started
    return reads / (time.perf_counter() - started), cpu / reads * 1000


async def gateway(
    ports: list[int], units: int, profile: Profile, seconds: float, data: Path
) -> tuple[float, float]:
    journal = await Journal.open(data / "journal.db")
    zone = ZoneInfo("Asia/Shanghai")
    clock = Clock()
    meters = {port: [f"L{port}-{u}" for u in range(1, units + 1)] for port in ports}
    book = MeterBook(
        journal,
        zone,
        [
            MeterInfo(m, "electricity", "billed", profile, 1.0)
            for ids in meters.values()
            for m in ids
        ],
    )
    pollers = []
    for port in ports:
        link = ModbusLink(
            ModbusTcpLink(
                id=f"L{port}",
                type="modbus_tcp",
                host="127.0.0.1",
                port=port,
                timeout_s=2,
                retries=0,
            )
        )
        devices = [
            Polled(
                m, u + 1, 0.0, PRIORITY_BILLED, DeviceHealth(m, "meter"), blocks=profile.blocks()
            )
            for u, m in enumerate(meters[port])
        ]
        pollers.append(LinkPoller(link, devices, book=book, journal=journal, clock=clock))
    settle_heap()  # as `gateway run` does once it is built
    cpu0, wall0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    reads = sum(p.link.transactions for p in pollers)
    await journal.close()
    return reads / wall, cpu / reads * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--links", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    profile = load_profile(PROFILE_PATH)
    ports = free_ports(args.links)
    units = args.meters // args.links
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(ports, units, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("simulated meters did not start")
        raws, rates, cpus, raw_cpus, ratios = [], [], [], [], []
        for round_no in range(args.rounds):
            for side in ("raw", "gateway") if round_no % 2 == 0 else ("gateway", "raw"):
                if side == "raw":
                    raw, raw_cpu = asyncio.run(raw_client(ports, units, profile, args.seconds))
                    raws.append(raw)
                    raw_cpus.append(raw_cpu)
                    continue
                with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
                    rate, cpu_ms = asyncio.run(
                        gateway(ports, units, profile, args.seconds, Path(tmp))
                    )
                rates.append(rate)
                cpus.append(cpu_ms)
            ratios.append(rates[-1] / raws[-1])
            print(
                f"round {round_no + 1}: raw {raws[-1]:.0f} reads/s ({raw_cpus[-1]:.3f} ms CPU "
                f"each), gateway {rates[-1]:.0f} "
                f"reads/s ({cpus[-1]:.3f} ms CPU each), ratio {ratios[-1]:.2f}",
                flush=True,
            )
    finally:
        server.terminate()
        server.join()
    print(
        f"cores: {os.cpu_count()}  meters: {units * args.links}  links: {args.links}  "
        f"reads per meter poll: {len(profile.blocks())}"
    )
    print(f"raw_client_cpu_ms_per_read: {statistics.median(raw_cpus):.3f}")
    print(f"raw_client_reads_per_s: {statistics.median(raws):.0f}")
    print(f"gateway_cpu_ms_per_read: {statistics.median(cpus):.3f}")
    print(f"modbus_vs_raw_client: {statistics.median(ratios):.2f}")
    print(f"modbus_reads_per_s: {statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
