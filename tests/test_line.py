"""The RS-485 line emulator keeps wire time, so bus benchmarks mean something.

A bare pty delivers 960 bytes "at 9600 baud" in a millisecond; these tests
check that ``LineEmulator`` instead delivers them when they would have left a
real wire, shares one busy clock between both directions (half-duplex), and
reports the frames and silences a Modbus RTU exchange left on the line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from itertools import pairwise

import pytest
import serial
from pymodbus.client import ModbusSerialClient

from gateway.sim.line import LineEmulator, WireFrame, theoretical_cycle_s
from tests.harness.modbus import RtuServerOnPath

log = logging.getLogger(__name__)

# Wire times are checked to within 10 % (the brief); the pymodbus cycle to 25 %.
TIMING_TOLERANCE = 0.10


@pytest.fixture
def line() -> Iterator[LineEmulator]:
    """A 9600 8N1 line, stopped after the test."""
    with LineEmulator(9600) as emulator:
        yield emulator


@pytest.fixture
def ports(line: LineEmulator) -> Iterator[tuple[serial.Serial, serial.Serial]]:
    """Both ends of ``line`` opened with pyserial, as the gateway opens a real port."""
    with (
        serial.Serial(line.path_a, timeout=1) as port_a,
        serial.Serial(line.path_b, timeout=1) as port_b,
    ):
        yield port_a, port_b


def _timed_read(port: serial.Serial, size: int) -> Callable[[], tuple[bytes, float]]:
    """A reader for a worker thread: the bytes and the perf_counter when the last one came."""

    def read() -> tuple[bytes, float]:
        data = port.read(size)
        return data, time.perf_counter()

    return read


# -- arithmetic ---------------------------------------------------------------


def test_theoretical_cycle_reproduces_the_devices_table() -> None:
    """The formula gives research/DEVICES.md's numbers: it is what benchmarks compare to."""
    assert theoretical_cycle_s(8, 9, 9600) == pytest.approx(0.025)
    assert theoretical_cycle_s(8, 9, 19200) == pytest.approx(0.0125)
    assert 1 / theoretical_cycle_s(8, 9, 9600, 0.010) == pytest.approx(28.6, abs=0.05)
    assert 1 / theoretical_cycle_s(8, 9, 19200, 0.050) == pytest.approx(16.0, abs=0.05)
    assert 1 / theoretical_cycle_s(8, 9, 2400) == pytest.approx(10.0)
    # One 60-register block read: 8-byte request, 5 + 120-byte reply.
    assert theoretical_cycle_s(8, 125, 9600) == pytest.approx(0.1458, abs=0.0001)
    assert theoretical_cycle_s(8, 9, 9600, bits_per_char=11) == pytest.approx(0.0275)


def test_character_time_follows_framing() -> None:
    """8N1 is 10 bits a character, 8E1 11; t3.5 is 3.646 ms at 9600 8N1."""
    assert LineEmulator(9600).char_time == pytest.approx(10 / 9600)
    assert LineEmulator(9600).t35 == pytest.approx(0.003646, abs=1e-6)
    assert LineEmulator(19200).t35 == pytest.approx(0.001823, abs=1e-6)
    assert LineEmulator(9600, bits_per_char=11).char_time == pytest.approx(11 / 9600)


@pytest.mark.parametrize(("baudrate", "bits"), [(0, 10), (-9600, 10), (9600, 0)])
def test_rejects_impossible_line_settings(baudrate: int, bits: int) -> None:
    with pytest.raises(ValueError):
        LineEmulator(baudrate, bits_per_char=bits)


# -- the wire -----------------------------------------------------------------


def test_bytes_pass_both_ways_unchanged(ports: tuple[serial.Serial, serial.Serial]) -> None:
    """Every byte value crosses intact: no echo, CR/LF, XON/XOFF or ^C handling (raw ttys)."""
    port_a, port_b = ports
    payload = bytes(range(256))
    port_a.write(payload)
    assert port_b.read(len(payload)) == payload
    port_b.write(payload[::-1])
    assert port_a.read(len(payload)) == payload[::-1]
    assert port_a.in_waiting == port_b.in_waiting == 0


@pytest.mark.parametrize(("baudrate", "expected_s"), [(9600, 1.0), (19200, 0.5)])
def test_960_bytes_take_wire_time(baudrate: int, expected_s: float) -> None:
    """960 bytes of 10 bits take 1 s at 9600 baud (a bare pty: ~1 ms)."""
    with (
        LineEmulator(baudrate) as line,
        serial.Serial(line.path_a, timeout=2) as port_a,
        serial.Serial(line.path_b, timeout=2) as port_b,
    ):
        started = time.perf_counter()
        port_a.write(bytes(960))
        data = port_b.read(960)
        elapsed = time.perf_counter() - started
    assert len(data) == 960
    assert elapsed == pytest.approx(expected_s, rel=TIMING_TOLERANCE)


def test_half_duplex_line_carries_one_direction_at_a_time(
    line: LineEmulator, ports: tuple[serial.Serial, serial.Serial]
) -> None:
    """Both ends talking at once: the second message waits for the first to leave the wire."""
    port_a, port_b = ports
    one_message_s = 96 * line.char_time  # 0.1 s
    with ThreadPoolExecutor(max_workers=2) as pool:
        at_b = pool.submit(_timed_read(port_b, 96))
        at_a = pool.submit(_timed_read(port_a, 96))
        started = time.perf_counter()
        port_a.write(b"A" * 96)
        port_b.write(b"B" * 96)
        (data_b, done_b), (data_a, done_a) = at_b.result(), at_a.result()
    assert (data_b, data_a) == (b"A" * 96, b"B" * 96)
    first, second = sorted([done_a - started, done_b - started])
    assert first == pytest.approx(one_message_s, rel=TIMING_TOLERANCE)
    assert second == pytest.approx(2 * one_message_s, rel=TIMING_TOLERANCE)
    frames = line.frames()
    assert {frame.direction for frame in frames} == {"a->b", "b->a"}
    assert [frame.nbytes for frame in frames] == [96, 96]
    assert frames[1].start == pytest.approx(frames[0].end)  # queued behind, not overlapping


def test_frames_and_the_silence_between_them(
    line: LineEmulator, ports: tuple[serial.Serial, serial.Serial]
) -> None:
    """An 8-byte write is one 8-character frame; 20 ms of silence splits two frames."""
    port_a, port_b = ports
    started = time.perf_counter()
    port_a.write(bytes(8))
    assert port_b.read(8) == bytes(8)
    arrived = time.perf_counter()
    time.sleep(0.020)
    resent = time.perf_counter()
    port_a.write(bytes(8))
    assert port_b.read(8) == bytes(8)

    first, second = line.frames()
    eight_chars = 8 * line.char_time
    assert first == WireFrame("a->b", first.start, first.end, 8)
    assert second.direction == "a->b" and second.nbytes == 8
    assert first.end - first.start == pytest.approx(eight_chars)
    # Timestamps share the caller's perf_counter clock; bytes never arrive early.
    assert started <= first.start < first.end <= arrived
    assert eight_chars <= arrived - started < eight_chars + 0.005
    # The silence is what the sender left (20 ms, plus this thread's own wake-up
    # latency, which a loaded 2-core box can stretch), as timestamped by the bridge.
    gap = second.start - first.end
    assert 0.020 <= gap < 0.030
    assert gap == pytest.approx(resent - first.end, abs=0.002)
    assert line.min_gap_between_frames() == pytest.approx(second.start - first.end)

    line.reset_stats()
    assert line.frames() == []
    assert line.min_gap_between_frames() is None


def test_bytes_closer_than_t15_stay_one_frame(
    line: LineEmulator, ports: tuple[serial.Serial, serial.Serial]
) -> None:
    """A write queued behind one still on the wire joins its frame (no t1.5 gap between them)."""
    port_a, port_b = ports
    port_a.write(bytes(48))  # 50 ms on the wire: the next write surely finds the line busy
    port_a.write(bytes(5))
    assert port_b.read(53) == bytes(53)
    [frame] = line.frames()
    assert frame.nbytes == 53
    assert frame.end - frame.start == pytest.approx(53 * line.char_time)


def test_lifecycle() -> None:
    """Paths exist only while running; stop is idempotent; a double start is refused."""
    line = LineEmulator(19200)
    assert line.path_a == line.path_b == ""
    with line:
        assert line.path_a.startswith("/dev/") and line.path_b.startswith("/dev/")
        assert line.path_a != line.path_b
        with pytest.raises(RuntimeError):
            line.start()
    assert line.path_a == line.path_b == ""
    line.stop()
    with pytest.raises(RuntimeError):
        line.frames()


# -- a real Modbus RTU exchange -------------------------------------------------


def _gaps(frames: list[WireFrame], before: str, after: str) -> list[float]:
    """Silences between a ``before`` frame and the ``after`` frame that follows it."""
    return [
        nxt.start - prev.end
        for prev, nxt in pairwise(frames)
        if prev.direction == before and nxt.direction == after
    ]


def test_modbus_rtu_reads_at_wire_speed(
    line: LineEmulator, record_property: Callable[[str, object], None]
) -> None:
    """pymodbus client and server across the line: cycles cost what the wire says.

    Also records the silences pymodbus leaves (it is known not to keep t3.5);
    they are reported, not asserted.
    """
    reads = 20
    with ExitStack() as stack:
        server = stack.enter_context(RtuServerOnPath(line.path_b, 9600))
        server.set_holding_registers(1, 0, [1234, 5678])
        client = ModbusSerialClient(port=line.path_a, baudrate=9600, timeout=1, retries=0)
        stack.callback(client.close)
        assert client.connect()

        first = client.read_holding_registers(0, count=2, device_id=1)
        assert not first.isError()
        assert first.registers == [1234, 5678]

        line.reset_stats()
        started = time.perf_counter()
        for _ in range(reads):
            assert not client.read_holding_registers(0, count=2, device_id=1).isError()
        elapsed = time.perf_counter() - started
    frames = line.frames()
    min_gap = line.min_gap_between_frames()

    expected = reads * theoretical_cycle_s(8, 9, 9600)
    log.info("%d reads: %.1f ms (theory %.1f ms)", reads, elapsed * 1e3, expected * 1e3)
    assert elapsed == pytest.approx(expected, rel=0.25)

    assert [(frame.direction, frame.nbytes) for frame in frames] == [
        ("a->b", 8),
        ("b->a", 9),
    ] * reads
    assert min_gap is not None and min_gap >= 0
    turnaround = _gaps(frames, "a->b", "b->a")  # the simulated meter's reply delay
    client_gap = _gaps(frames, "b->a", "a->b")  # reply end -> next request
    summary = (
        f"t3.5={line.t35 * 1e3:.3f} ms; min gap={min_gap * 1e3:.3f} ms; "
        f"server turnaround min/max={min(turnaround) * 1e3:.3f}/{max(turnaround) * 1e3:.3f} ms; "
        f"client gap min/max={min(client_gap) * 1e3:.3f}/{max(client_gap) * 1e3:.3f} ms; "
        f"cycle={elapsed / reads * 1e3:.2f} ms"
    )
    print(summary)
    log.info(summary)
    record_property("min_gap_between_frames_s", min_gap)
    record_property("client_min_gap_s", min(client_gap))
    record_property("server_min_turnaround_s", min(turnaround))
