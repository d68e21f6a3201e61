"""A timing-faithful RS-485 line emulator: two tty paths joined at a real baud rate.

Why it exists: a pty ignores the baud rate -- 9,600 bytes "at 9600 baud"
cross a pty in about a millisecond -- so a test or benchmark on a bare pty
(or on ``tests.harness.serial_line.null_modem``) says nothing about how many
reads a bus can do per second, or whether a client keeps the Modbus RTU
inter-frame silence. ``LineEmulator`` puts the wire back:

* Two raw pty pairs; the code under test opens ``path_a`` and ``path_b``
  exactly like ``/dev/ttyUSB0`` (pyserial, pymodbus' serial transport).
* A bridge reads each chunk written on one side and hands it to the other
  side only when its last bit would have left the wire:
  ``start = max(now, line_free_at)``, ``end = start + len(chunk) * char_time``.
* ONE ``line_free_at`` clock serves both directions, because RS-485 is
  half-duplex: a reply cannot start while the request is still on the wire.
  (A real bus would garble two simultaneous talkers; the emulator serialises
  them instead, which is the best a test can hope for.)
* Every chunk's wire time is recorded and merged into "wire frames" -- runs of
  bytes in one direction separated by less than 1.5 character times, the
  Modbus RTU t1.5 rule -- so a test can measure the silence a client or a
  device left between frames and compare it with t3.5. Every direction change
  starts a new frame, so every turnaround silence is visible in ``frames()``.

Why the bridge is a child process, not a thread: the line must not slow down
when the code under test is busy. A bridge thread shares the GIL with it, and
CPython lets a thread wait up to the 5 ms switch interval for the GIL -- with
one CPU-bound thread in the same process, deliveries were measured ~5 ms late
(median), more than t3.5 at 9600 baud. In its own process the bridge is only
subject to the OS scheduler. It is a small stdlib-only script (this file, run
with ``python -I``), controlled through its stdin/stdout: it exits when its
stdin closes, so it cannot outlive a crashed parent. Its timestamps are
``time.perf_counter()`` values, which on Linux are CLOCK_MONOTONIC and thus
comparable with the parent's own ``perf_counter()``.

Timing: the bridge sleeps in ``select`` (so new chunks are still timestamped
promptly) until ``_SPIN_S`` before the next deadline, then polls without
sleeping. ``select`` overshoots by ~80-110 µs on the 2-vCPU target (timer
slack is 50 µs), so a 0.3 ms spin window delivers within a few µs of the
deadline while spinning at most ~0.3 ms per delivered chunk; an idle line
costs no CPU at all.

What it does not model: bytes of one chunk arrive together at the end of the
chunk (not one by one), a writer's ``flush()`` returns at once (a pty has no
transmit shift register), and a collision is queued, never corrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from collections import deque
from types import TracebackType
from typing import Any, Literal, NamedTuple

log = logging.getLogger(__name__)

Direction = Literal["a->b", "b->a"]

_CHUNK = 4096
# Sleep (in select) until this long before a deadline, then poll; see module docstring.
_SPIN_S = 0.0003
_START_TIMEOUT_S = 10.0
_CALL_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# Modbus RTU: a silence of 1.5 characters ends a frame (t1.5); frames need 3.5 (t3.5).
_FRAME_GAP_CHARS = 1.5
_T35_CHARS = 3.5


class WireFrame(NamedTuple):
    """One frame as it was on the wire: bytes in one direction without a t1.5 gap.

    ``start`` and ``end`` are ``time.perf_counter()`` values: when the first
    bit left the sender and when the last bit reached the receiver.
    """

    direction: Direction
    start: float
    end: float
    nbytes: int


def _char_time(baudrate: int, bits_per_char: int) -> float:
    """Seconds one character occupies the wire (start + data + parity + stop bits)."""
    if baudrate <= 0:
        raise ValueError(f"baudrate must be positive, got {baudrate}")
    if bits_per_char <= 0:
        raise ValueError(f"bits_per_char must be positive, got {bits_per_char}")
    return bits_per_char / baudrate


def theoretical_cycle_s(
    request_bytes: int,
    reply_bytes: int,
    baudrate: int,
    turnaround_s: float = 0.0,
    bits_per_char: int = 10,
) -> float:
    """The shortest possible request/reply cycle on a Modbus RTU line.

    request + t3.5 + device turnaround + reply + t3.5 (research/DEVICES.md):
    the physical floor a poller can be judged against. "Read 2 registers" at
    9600 8N1 (8-byte request, 9-byte reply) is 25.0 ms, i.e. 40 reads/s.
    """
    if request_bytes < 0 or reply_bytes < 0:
        raise ValueError("frame sizes must not be negative")
    if turnaround_s < 0:
        raise ValueError("turnaround_s must not be negative")
    char_time = _char_time(baudrate, bits_per_char)
    return (request_bytes + reply_bytes + 2 * _T35_CHARS) * char_time + turnaround_s


# -- the bridge (runs in the child process) ----------------------------------


class _Pending(NamedTuple):
    """A chunk on the wire, waiting for its last bit to arrive at ``dst_fd``."""

    due: float
    dst_fd: int
    data: bytes


def _write_all_blocking(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking fd (a pipe may take part of a write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_some(fd: int, buffer: bytearray) -> None:
    """Write as much of ``buffer`` as non-blocking ``fd`` takes now; drop that part.

    A receiver that stops reading fills its pty; that must not stall the other
    direction or the control channel, so the rest waits in ``buffer``.
    """
    try:
        written = os.write(fd, buffer)
    except BlockingIOError:
        return
    del buffer[:written]


class _Wire:
    """The line itself: both pty pairs, the shared busy clock and the frame log.

    Lives in the child process; the parent talks to it with one-line commands
    on ``control_fd`` and gets one JSON line back per command on ``reply_fd``.
    """

    def __init__(self, char_time: float) -> None:
        self.char_time = char_time
        self.t35 = _T35_CHARS * char_time
        self.frame_gap = _FRAME_GAP_CHARS * char_time
        self.line_free_at = 0.0
        self.pending: deque[_Pending] = deque()
        self.frames: list[WireFrame] = []
        self.min_gap: float | None = None
        self.fds: list[int] = []
        self.paths: list[str] = []
        self.masters: list[int] = []
        self.outbuf: dict[int, bytearray] = {}
        # How late deliveries were against their deadline: the emulator's own error.
        self.delivered = 0
        self.lateness_sum = 0.0
        self.lateness_max = 0.0

    def open(self) -> None:
        """Open two raw pty pairs.

        Raw mode: a fresh pty echoes and translates CR/LF, corrupting binary
        frames. The slave fds stay open for the wire's lifetime so the ttys
        keep their settings and a master read blocks instead of failing with
        EIO while nobody has a path open.
        """
        for _ in range(2):
            master_fd, slave_fd = os.openpty()
            self.fds += [master_fd, slave_fd]
            tty.setraw(slave_fd)
            os.set_blocking(master_fd, False)
            self.masters.append(master_fd)
            self.paths.append(os.ttyname(slave_fd))
            self.outbuf[master_fd] = bytearray()

    def close(self) -> None:
        """Close every pty fd; bytes still on the wire are lost, as when a cable is pulled."""
        if self.pending:
            log.debug("closing with %d chunk(s) on the wire", len(self.pending))
        if self.delivered:
            log.debug(
                "%d chunks delivered, %.1f µs late on average, %.1f µs at worst",
                self.delivered,
                self.lateness_sum / self.delivered * 1e6,
                self.lateness_max * 1e6,
            )
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def run(self, control_fd: int, reply_fd: int) -> None:
        """Bridge until ``stop`` or EOF on ``control_fd``.

        One loop for everything, so reads are timestamped promptly even while
        a delivery is being waited for.
        """
        master_a, master_b = self.masters
        peer = {master_a: master_b, master_b: master_a}
        direction: dict[int, Direction] = {master_a: "a->b", master_b: "b->a"}
        readers = [master_a, master_b, control_fd]
        commands = b""
        while True:
            now = time.perf_counter()
            self._deliver_due(now)
            timeout: float | None = None
            if self.pending:
                # Sleep until _SPIN_S before the deadline, then poll (timeout 0).
                timeout = max(0.0, self.pending[0].due - now - _SPIN_S)
            writers = [fd for fd, buffer in self.outbuf.items() if buffer]
            readable, writable, _ = select.select(readers, writers, [], timeout)
            now = time.perf_counter()
            for fd in readable:
                if fd == control_fd:
                    continue
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if chunk:
                    self._schedule(direction[fd], peer[fd], chunk, now)
            for fd in writable:
                _write_some(fd, self.outbuf[fd])
            if control_fd in readable:
                data = os.read(control_fd, _CHUNK)
                if not data:
                    return
                commands += data
                while b"\n" in commands:
                    line, commands = commands.split(b"\n", 1)
                    command = line.decode().strip()
                    if command == "stop":
                        return
                    reply = self._command(command)
                    _write_all_blocking(reply_fd, json.dumps(reply).encode() + b"\n")

    def _command(self, command: str) -> Any:
        """Answer one control command (a JSON-serialisable value)."""
        if command == "frames":
            return [list(frame) for frame in self.frames]
        if command == "min_gap":
            return self.min_gap
        if command == "reset":
            self.frames.clear()
            self.min_gap = None
            return "ok"
        return {"error": f"unknown command {command!r}"}

    def _schedule(self, direction: Direction, dst_fd: int, chunk: bytes, now: float) -> None:
        """Put ``chunk`` on the wire after whatever is already on it (either direction)."""
        start = max(now, self.line_free_at)
        end = start + len(chunk) * self.char_time
        self.line_free_at = end
        self.pending.append(_Pending(end, dst_fd, chunk))
        self._record(direction, start, end, len(chunk))

    def _record(self, direction: Direction, start: float, end: float, nbytes: int) -> None:
        """Log a chunk's wire time, extending the last frame if the t1.5 rule says so.

        Once a frame follows, the previous one can no longer grow, so the gap
        between them is final and the running minimum stays exact.
        """
        last = self.frames[-1] if self.frames else None
        if last is not None:
            idle = start - last.end
            if last.direction == direction and idle < self.frame_gap:
                self.frames[-1] = last._replace(end=end, nbytes=last.nbytes + nbytes)
                return
            if self.min_gap is None or idle < self.min_gap:
                self.min_gap = idle
            if last.direction != direction and idle < self.t35:
                log.debug(
                    "%s after %s: %.3f ms of silence < t3.5 (%.3f ms)",
                    direction,
                    last.direction,
                    idle * 1e3,
                    self.t35 * 1e3,
                )
        self.frames.append(WireFrame(direction, start, end, nbytes))

    def _deliver_due(self, now: float) -> None:
        """Hand every chunk whose last bit has arrived to its receiver.

        ``line_free_at`` only grows, so due times are in FIFO order.
        """
        while self.pending and self.pending[0].due <= now:
            item = self.pending.popleft()
            late = now - item.due
            self.delivered += 1
            self.lateness_sum += late
            self.lateness_max = max(self.lateness_max, late)
            if late > self.char_time:
                log.debug("delivery %.3f ms late (scheduler delay)", late * 1e3)
            buffer = self.outbuf[item.dst_fd]
            buffer += item.data
            _write_some(item.dst_fd, buffer)


def _child_main(argv: list[str]) -> int:
    """Entry point of the bridge process: print the paths, then bridge until told to stop."""
    parser = argparse.ArgumentParser(description="RS-485 line emulator bridge (internal)")
    parser.add_argument("--baudrate", type=int, required=True)
    parser.add_argument("--bits-per-char", type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s rs485-line[%(process)d] %(message)s"
    )
    # Ctrl-C reaches the whole process group; the parent decides when the line ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wire = _Wire(_char_time(args.baudrate, args.bits_per_char))
    try:
        wire.open()
        ready = {"path_a": wire.paths[0], "path_b": wire.paths[1]}
        _write_all_blocking(sys.stdout.fileno(), json.dumps(ready).encode() + b"\n")
        wire.run(sys.stdin.fileno(), sys.stdout.fileno())
    finally:
        wire.close()
    return 0


# -- the parent-side handle ---------------------------------------------------


class LineEmulator:
    """Two endpoints (device paths) joined by a simulated RS-485 line.

    Use as a context manager (or ``start()``/``stop()``); ``path_a`` and
    ``path_b`` are valid while it runs and change on every start, like a
    fresh USB adapter. ``bits_per_char`` is 10 for 8N1, 11 for 8E1/8O1/8N2.
    The statistics calls ask the bridge process; on a line under load they
    briefly delay the bridge, so call them between measurements.
    """

    def __init__(self, baudrate: int = 9600, *, bits_per_char: int = 10) -> None:
        self._char_time = _char_time(baudrate, bits_per_char)
        self.baudrate = baudrate
        self.bits_per_char = bits_per_char
        self.path_a = ""
        self.path_b = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies = b""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"LineEmulator({self.baudrate} baud, {self.bits_per_char} bits/char, "
            f"{self.path_a or '-'} <-> {self.path_b or '-'})"
        )

    @property
    def char_time(self) -> float:
        """Seconds per character on the wire (bits_per_char / baudrate)."""
        return self._char_time

    @property
    def t35(self) -> float:
        """The Modbus RTU inter-frame silence, 3.5 character times (3.646 ms at 9600 8N1)."""
        return _T35_CHARS * self._char_time

    def __enter__(self) -> LineEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the bridge process; return once both paths can be opened."""
        if self._proc is not None:
            raise RuntimeError("line emulator already started")
        # -I: stdlib only, no environment or script-directory surprises in the child.
        command = [
            sys.executable,
            "-I",
            os.path.abspath(__file__),
            f"--baudrate={self.baudrate}",
            f"--bits-per-char={self.bits_per_char}",
            f"--log-level={log.getEffectiveLevel()}",
        ]
        self._replies = b""
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            ready = self._read_reply(_START_TIMEOUT_S)
            self.path_a, self.path_b = ready["path_a"], ready["path_b"]
        except BaseException:
            self._terminate()
            raise
        log.debug("%r started (bridge pid %d)", self, self._proc.pid)

    def stop(self) -> None:
        """Stop the bridge process and wait for it; raise if it had failed."""
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        try:
            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
        except OSError:
            pass  # already gone; the exit code tells why
        returncode = self._terminate()
        log.debug("%r stopped", self)
        self.path_a = self.path_b = ""
        if returncode != 0:
            raise RuntimeError(f"line emulator bridge exited with status {returncode}")

    def _terminate(self) -> int:
        """Close the pipes (EOF stops the bridge), reap it, kill it if it hangs."""
        proc, self._proc = self._proc, None
        assert proc is not None
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # a broken pipe while flushing: the child is gone already
        try:
            return proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("%r: bridge pid %d did not stop; killing it", self, proc.pid)
            proc.kill()
            return proc.wait()

    def _read_reply(self, timeout: float) -> Any:
        """Read one JSON line from the bridge, failing instead of hanging if it is stuck."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise RuntimeError("line emulator is not running")
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._replies:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not readable:
                raise TimeoutError(f"line emulator bridge did not answer in {timeout} s")
            data = os.read(fd, 1 << 16)
            if not data:
                raise RuntimeError(f"line emulator bridge exited (status {proc.poll()})")
            self._replies += data
        line, self._replies = self._replies.split(b"\n", 1)
        return json.loads(line)

    def _call(self, command: str) -> Any:
        """Send one command to the bridge and return its answer."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise RuntimeError("line emulator is not running")
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
            reply = self._read_reply(_CALL_TIMEOUT_S)
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"line emulator bridge: {reply['error']}")
        return reply

    def frames(self) -> list[WireFrame]:
        """The wire frames so far, oldest first.

        A frame is logged when its bytes are put on the wire, so the last one
        may still be in flight (``end`` in the future).
        """
        return [
            WireFrame(direction, start, end, nbytes)
            for direction, start, end, nbytes in self._call("frames")
        ]

    def min_gap_between_frames(self) -> float | None:
        """The shortest silence between consecutive frames (any direction), or None.

        Compare with ``t35``: a Modbus RTU sender must stay silent 3.5
        characters between frames or a real device may merge or drop them.
        """
        gap = self._call("min_gap")
        return None if gap is None else float(gap)

    def reset_stats(self) -> None:
        """Forget the recorded frames, e.g. after a warm-up."""
        self._call("reset")


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
