"""Modbus RTU on a serial line: the link keeps the 3.5-character silence on a
timing-faithful line, and tells garbage, truncated frames and a wrong unit
apart from silence on a raw pty (the test plays the device)."""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pymodbus.framer import FramerRTU

from gateway.adapters.modbus.decode import decode_block, encode_value
from gateway.adapters.modbus.errors import FrameError, NoAnswer, WrongUnit
from gateway.adapters.modbus.link import ModbusLink
from gateway.config import ModbusSerialLink
from gateway.profiles import load_profile
from gateway.sim.line import LineEmulator
from tests.harness.modbus import RtuServerOnPath
from tests.harness.serial_line import PtyPair

SDM120 = load_profile(Path(__file__).parent.parent / "config" / "profiles" / "eastron-sdm120.toml")


def serial_link(path: str, *, timeout_s: float = 0.3, retries: int = 0) -> ModbusLink:
    return ModbusLink(
        ModbusSerialLink(
            id="BUS",
            type="modbus_rtu",
            device=path,
            baudrate=9600,
            timeout_s=timeout_s,
            retries=retries,
        )
    )


def test_link_keeps_the_inter_frame_silence_on_a_9600_baud_line() -> None:
    with (
        LineEmulator(9600) as line,
        RtuServerOnPath(line.path_b, 9600, units=(1, 2), size=400) as server,
    ):
        for unit in (1, 2):
            for spec in SDM120.values:
                server.set_input_registers(unit, spec.address, encode_value(spec, 230.2))

        async def main() -> list[dict[str, float | int]]:
            link = serial_link(line.path_a)
            results = []
            try:
                line.reset_stats()
                for i in range(10):
                    block = SDM120.blocks()[i % 2]
                    registers = await link.read(1 + i % 2, 4, block.address, block.count)
                    results.append(decode_block(block, registers))
            finally:
                await link.close()
            return results

        results = asyncio.run(main())
        frames = line.frames()
    assert all(value == 230.2 for result in results for value in result.values())
    requests = [f for f in frames if f.direction == "a->b"]
    assert len(requests) == 10
    # silence before each request that follows a reply: never under t3.5 (3.646 ms)
    gaps = [
        nxt.start - prev.end
        for prev, nxt in itertools.pairwise(frames)
        if prev.direction == "b->a" and nxt.direction == "a->b"
    ]
    assert len(gaps) == 9
    assert min(gaps) >= line.t35 * 0.98, f"gaps {gaps}"


@contextmanager
def fake_device(respond: Callable[[bytes], bytes | None]) -> Iterator[PtyPair]:
    """The test plays the meter on the master end of a pty: reads each request,
    writes whatever ``respond`` returns (None: stay silent)."""
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    path = os.ttyname(slave)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                request = os.read(master, 256)
                answer = respond(request)
                if answer:
                    os.write(master, answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield PtyPair(master, path)
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)


def frame(body: bytes) -> bytes:
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


@pytest.mark.parametrize(
    ("respond", "error", "counter"),
    [
        (lambda req: None, NoAnswer, "timeout"),
        (lambda req: b"\x13\x37\xff\x00\x42\x99\x01", FrameError, "frame_error"),
        (lambda req: frame(b"\x01\x04\x04\x43\x66\x33\x34")[:-3], FrameError, "frame_error"),
        (
            lambda req: frame(b"\x01\x04\x04\x43\x66\x33\x34")[:-1] + b"\x00",
            FrameError,
            "frame_error",
        ),
        (lambda req: frame(b"\x05\x04\x04\x43\x66\x33\x34"), WrongUnit, "wrong_unit"),
    ],
    ids=["silent", "garbage", "truncated", "bad-crc", "other-unit"],
)
def test_line_faults_are_told_apart(
    respond: Callable[[bytes], bytes | None], error: type[Exception], counter: str
) -> None:
    with fake_device(respond) as pty:

        async def main() -> None:
            link = serial_link(pty.slave_path)
            try:
                with pytest.raises(error) as info:
                    await link.read(1, 4, 0, 2)
                assert info.value.counter == counter  # type: ignore[attr-defined]
            finally:
                await link.close()

        asyncio.run(main())


def test_a_good_answer_after_garbage_is_read() -> None:
    answers = iter([b"\x00\xff\x13", frame(b"\x01\x04\x04\x43\x66\x33\x34")])

    with fake_device(lambda req: next(answers, None)) as pty:

        async def main() -> list[int]:
            link = serial_link(pty.slave_path, retries=1)
            try:
                return await link.read(1, 4, 0, 2)
            finally:
                await link.close()

        assert asyncio.run(main()) == [0x4366, 0x3334]  # the check frame: 230.2 V


@pytest.mark.parametrize(
    ("delay", "ok"), [(0.2, True), (0.45, False)], ids=["just-under-timeout", "just-over-timeout"]
)
def test_answers_near_the_timeout(delay: float, ok: bool) -> None:
    answer = frame(b"\x01\x04\x04\x43\x66\x33\x34")

    def slow(request: bytes) -> bytes:
        time.sleep(delay)
        return answer

    with fake_device(slow) as pty:

        async def main() -> None:
            link = serial_link(pty.slave_path, timeout_s=0.3)
            try:
                if ok:
                    assert await link.read(1, 4, 0, 2) == [0x4366, 0x3334]
                else:
                    with pytest.raises(NoAnswer):
                        await link.read(1, 4, 0, 2)
            finally:
                await link.close()

        asyncio.run(main())


def test_a_late_answer_is_never_taken_for_the_next_request() -> None:
    """The meter answers its first request just after the timeout; the gateway's
    next request (same unit, same size, other registers) must get its own answer,
    not the late one — or a bill would show one register's value for another's."""
    late = frame(b"\x01\x04\x04\x00\x00\x00\x01")  # registers 0-1: the late answer
    own = frame(b"\x01\x04\x04\x00\x00\x00\x64")  # registers 100-101: 100

    def device(request: bytes) -> bytes:
        if request[2:4] == b"\x00\x00":
            time.sleep(0.45)  # just over the 0.3 s timeout
            return late
        return own

    with fake_device(device) as pty:

        async def main() -> list[int]:
            link = serial_link(pty.slave_path, timeout_s=0.3)
            try:
                with pytest.raises(NoAnswer):
                    await link.read(1, 4, 0, 2)
                return await link.read(1, 4, 100, 2)
            finally:
                await link.close()

        assert asyncio.run(main()) == [0, 100]
