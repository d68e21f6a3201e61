"""RTU bus benchmark: the gateway's serial link against the physical limit.

A timing-faithful RS-485 line (gateway.sim.line: two pty pairs, each chunk
held until it would have finished on the wire, one shared line-busy clock)
joins the gateway's ``ModbusLink`` to a pymodbus RTU server. The link reads 2
registers at a time, as a meter poll of one value would, keeping the
3.5-character silence itself. Prints the theoretical limit, the measured
rate, the smallest silence seen on the wire and last ``rtu_vs_physical: R``.

    .venv/bin/python bench/rtu_bus.py [--baud 9600] [--reads 400]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import threading
import time

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.adapters.modbus.link import ModbusLink
from gateway.config import ModbusSerialLink
from gateway.sim.line import LineEmulator, theoretical_cycle_s


def start_server(path: str, baud: int) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A pymodbus RTU server with one unit, on its own loop thread."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def serve() -> None:
        device = SimDevice(
            1,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
        )
        server = ModbusSerialServer([device], framer=FramerType.RTU, port=path, baudrate=baud)
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.3)
        started.set()
        await task

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    started.wait(10)
    return loop, thread


async def poll(path: str, baud: int, reads: int) -> float:
    link = ModbusLink(
        ModbusSerialLink(
            id="BUS", type="modbus_rtu", device=path, baudrate=baud, timeout_s=0.5, retries=0
        )
    )
    try:
        await link.read(1, 4, 0, 2)  # connect and settle
        started = time.perf_counter()
        for _ in range(reads):
            await link.read(1, 4, 0, 2)
        return reads / (time.perf_counter() - started)
    finally:
        await link.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--reads", type=int, default=400)
    args = parser.parse_args()
    with LineEmulator(args.baud) as line:
        start_server(line.path_b, args.baud)
        line.reset_stats()
        rate = asyncio.run(poll(line.path_a, args.baud, args.reads))
        frames = line.frames()
    gaps = [
        nxt.start - prev.end
        for prev, nxt in itertools.pairwise(frames)
        if prev.direction == "b->a" and nxt.direction == "a->b"
    ]
    turnarounds = sorted(
        nxt.start - prev.end
        for prev, nxt in itertools.pairwise(frames)
        if prev.direction == "a->b" and nxt.direction == "b->a"
    )
    turnaround = turnarounds[len(turnarounds) // 2]
    textbook = 1 / theoretical_cycle_s(8, 9, args.baud)
    # The simulated device answers after ~0.6 ms, not after t3.5 as the textbook
    # cycle assumes; the fair limit is the wire time with the device's measured
    # turnaround and the one silence the gateway owes before its next request.
    limit = 1 / (theoretical_cycle_s(8, 9, args.baud) - line.t35 + turnaround)
    print(f"baud: {args.baud}  reads: {args.reads} (2 registers each)")
    print(f"textbook_limit_reads_per_s: {textbook:.1f}  (request + t3.5 + reply + t3.5)")
    print(f"device_turnaround_ms: {turnaround * 1000:.2f}")
    print(f"physical_limit_reads_per_s: {limit:.1f}  (request + turnaround + reply + t3.5)")
    print(f"rtu_reads_per_s: {rate:.1f}")
    print(f"min_silence_before_request_ms: {min(gaps) * 1000:.2f}  (t3.5 = {line.t35 * 1000:.2f})")
    print(f"rtu_vs_physical: {rate / limit:.2f}")


if __name__ == "__main__":
    main()
