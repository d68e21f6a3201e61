"""A simulated patrol wand in its cradle, on a pseudo-terminal.

It speaks the protocol of ``gateway.adapters.serial.wand`` (``N?``, ``R0001``,
``T?``, ``T{yyMMddHHmmss}``, ``C``) on the master end of a raw pty; the
gateway opens ``port`` (the slave path) exactly like ``/dev/ttyUSB0``. A
thread answers, so tests and the demo need no event loop for it.

What it can do wrong, on purpose: keep a clock hours off (``clock_offset``),
hold a corrupt record (``inject_corrupt``), send noise (``send_noise``,
``noise_before_reply``), refuse to clear (``refuse_clear``), never answer
some records (``mute_records``), or be out of the cradle (``docked = False``:
silent).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import tty
from datetime import datetime, timedelta
from types import TracebackType
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

_STAMP = "%y%m%d%H%M%S"


def _checksum(body: str) -> str:
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


class SimWand:
    """A wand docked in a cradle at ``port`` (see the module docstring).

    ``clock_offset`` is how far the wand's clock is ahead of the site's real
    time (``timedelta(hours=14)``: 14 h fast). ``checksum`` adds ``*HH`` to
    every reply line.
    """

    def __init__(
        self,
        *,
        zone: ZoneInfo | str = "Asia/Shanghai",
        clock_offset: timedelta = timedelta(0),
        checksum: bool = True,
    ) -> None:
        self.zone = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
        self.clock_offset = clock_offset
        self.checksum = checksum
        self.docked = True
        """False: the cradle is empty and nothing answers."""
        self.refuse_clear = 0
        """Answer this many ``C`` commands with ``ERR`` (and keep the records)."""
        self.noise_before_reply: bytes | None = None
        """Sent before every reply, e.g. ``b"\\x00\\xff#@!\\r\\n"``."""
        self.mute_records: set[int] = set()
        """Record numbers never answered (a flash page the wand cannot read)."""
        self.commands: list[str] = []
        """Every command received, in order."""
        self._records: list[str] = []  # each record without its number
        self._lock = threading.Lock()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self._port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    # ---- the wand's contents --------------------------------------------------------

    @property
    def port(self) -> str:
        """The tty path the gateway opens."""
        return self._port

    @property
    def records(self) -> list[str]:
        """The stored records as the wand sends them (``0001261123013000 0F004EBEFC``)."""
        with self._lock:
            return [f"{i:04X}{body}" for i, body in enumerate(self._records, start=1)]

    @property
    def clock(self) -> datetime:
        """The wand's clock now: naive site time, ``clock_offset`` off."""
        return self._site_now() + self.clock_offset

    def _site_now(self) -> datetime:
        return datetime.now(self.zone).replace(tzinfo=None)

    def add_scan(self, chip: str, when: datetime) -> str:
        """Store a read of ``chip`` at ``when`` (naive wand time); return the record."""
        body = f"{when:{_STAMP}} {chip.upper()}"
        with self._lock:
            self._records.append(body)
            return f"{len(self._records):04X}{body}"

    def inject_corrupt(self, body: str = "26112301ZZ00 0F004E") -> str:
        """Store a garbled record (its number stays right); return it as sent."""
        with self._lock:
            self._records.append(body)
            return f"{len(self._records):04X}{body}"

    def send_noise(self, data: bytes = b"\x00\xff#@!garbage\r\n") -> None:
        """Put bytes on the line now, unasked."""
        os.write(self._master, data)

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> SimWand:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="sim-wand", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"\0")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> SimWand:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- the protocol ---------------------------------------------------------------

    def _serve(self) -> None:
        pending = b""
        while True:
            readable, _, _ = select.select([self._master, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            pending += data.replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                command = raw.decode("ascii", "replace").strip()
                if command:
                    self._handle(command)

    def _handle(self, command: str) -> None:
        with self._lock:
            self.commands.append(command)
            if not self.docked:
                return
            reply = self._answer(command)
        if reply is None:
            return
        if self.noise_before_reply:
            os.write(self._master, self.noise_before_reply)
        line = f"{reply}*{_checksum(reply)}" if self.checksum else reply
        os.write(self._master, line.encode("ascii") + b"\r\n")

    def _answer(self, command: str) -> str | None:
        if command == "N?":
            return f"N={len(self._records):04X}"
        if command == "T?":
            return f"T={self.clock:{_STAMP}}"
        if command == "C":
            if self.refuse_clear > 0:
                self.refuse_clear -= 1
                return "ERR"
            self._records.clear()
            return "OK"
        if command.startswith("T") and len(command) == 13:
            try:
                wanted = datetime.strptime(command[1:], _STAMP)
            except ValueError:
                return "ERR"
            self.clock_offset = wanted - self._site_now()
            return "OK"
        if command.startswith("R") and len(command) == 5:
            try:
                number = int(command[1:], 16)
            except ValueError:
                return "ERR"
            if number in self.mute_records:
                return None
            if not 1 <= number <= len(self._records):
                return "ERR"
            return f"{number:04X}{self._records[number - 1]}"
        log.debug("sim wand: unknown command %r", command)
        return "ERR"
