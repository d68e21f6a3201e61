"""Patrol wands (巡更棒) in their serial cradle (通讯座): download, de-duplicate, clear.

A guard carries a wand on his round: it stores one record per chip it touches
(his personnel point 人员点, then the checkpoints). Back in the guard room he
docks it in the cradle; the gateway then downloads every record, commits them
to the journal, sets the wand's clock from the gateway and — only after the
commit — clears the wand (../shared/research/PATROL_GATES.md).

The wire protocol
-----------------
The protocol we implement (a common cheap-wand style); CHECK against a real
unit: the public record format is known, the command framing is not.

Serial 8N1 at the configured baud rate. The gateway sends one ASCII command
line ending in CR LF; the wand answers one line ending in CR LF, optionally
followed by ``*HH`` before the line end: the XOR of the reply's bytes before
the ``*``, as two upper-case hex digits. A reply with a wrong checksum is
treated as line noise.

==================  ==================================  =====================================
command             reply                               meaning
==================  ==================================  =====================================
``N?``              ``N=0005``                          number of stored records (4 hex digits)
``R0001``           ``0001261123013000 0F004EBEFC``     record *i* (1-based, 4 hex digits):
                    or ``ERR``                          number, ``yyMMddHHmmss`` wand time,
                                                        chip id (10 hex digits); the space
                                                        is optional
``T?``              ``T=261123013000``                  read the wand's clock
``T261123013000``   ``OK`` / ``ERR``                    set the wand's clock (site time)
``C``               ``OK`` / ``ERR``                    clear all records
==================  ==================================  =====================================

The wand's clock runs in site time (``site.timezone``); it has no zone.
The gateway flushes its input before each command, ignores lines that are
not the awaited reply (noise, a late answer to an earlier command; counted as
``frame_error``), waits ``timeout_s`` per command and retries once.

One download
------------
``N?`` (is a wand docked, how many records) → ``T?`` (the wand's clock, for
the skew) → ``R0001`` … ``R{n}`` → ONE journal write holding the download's
events → ``T{now}`` → ``N?`` again (still the same wand and records) → ``C``.

* Each checkpoint record is a ``patrol.scan`` event with the stable id
  ``patrol-scan:{wand}:{yyMMddHHmmss}:{chip}``: a wand that was not cleared
  (or a crash between commit and clear) downloads the same records again and
  the journal stores nothing new. The record number is not in the id: wands
  renumber from 1 after a clear.
* A record whose chip is one of a guard's ``cards`` is his personnel point: a
  ``patrol.guard_login`` event, and the following scans are his until the next
  personnel point.
* ``device_time`` is the wand's time (a wand can be hours off: it is kept, not
  corrected); ``received_at`` the gateway's; every event of a download carries
  ``clock_skew_s`` = wand clock minus gateway clock read at download time.
* A corrupt record becomes a ``patrol.wand_error`` event and the rest of the
  download goes on.
* A record the wand does not answer at all ends the download there: the records
  before it are committed (their guard attribution cannot depend on it), the
  clock is not set and the wand is not cleared, so the next try reads the rest
  with the skew that made them. If the same record is unanswered in a second
  download while the wand still answers ``N?``, it is given up as a
  ``patrol.wand_error`` and the download goes on.
* The clock is set only after a complete download is committed (setting it
  first would make the records left on the wand look correct when they are
  not), and the wand is cleared only after that, and only if it still holds
  the records just committed. The correction is journalled as
  ``patrol.wand_clock``.

The serial port is used with blocking pyserial calls in worker threads
(``asyncio.to_thread``), one command at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from zoneinfo import ZoneInfo

import serial

from gateway.clock import Clock, to_rfc3339
from gateway.config import SiteConfig
from gateway.errors import JournalError
from gateway.events import Event, new_event_id
from gateway.health import DeviceHealth, HealthChange
from gateway.journal.store import Journal, insert_events
from gateway.patrol.model import PatrolSettings
from gateway.supervisor import PartFactory

log = logging.getLogger(__name__)

POLL_S = 5.0
"""How often an idle cradle is asked whether a wand is docked."""
TIMEOUT_S = 1.0
"""How long one command waits for its reply (a cheap wand reads its flash slowly)."""
RETRY_S = 60.0
"""How long a docked wand that was not cleared waits before it is downloaded again."""
GIVE_UP_AFTER = 2
"""Downloads in which one record went unanswered before it is recorded as lost."""

_MAX_LINE = 256
_LINE_END = re.compile(rb"[\r\n]")
_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_RECORD = re.compile(r"([0-9A-Fa-f]{4})(\d{12})([0-9A-Fa-f]{10})")
_COUNT = re.compile(r"N=([0-9A-Fa-f]{4})")
_CLOCK = re.compile(r"T=(\d{12})")
_REPLY_SHAPES = (_COUNT, _CLOCK, re.compile(r"OK|ERR"))
_BLANK_CHIPS = frozenset({"0000000000", "FFFFFFFFFF"})
_LINE_REPR = 120


# ---- records -------------------------------------------------------------------------


@dataclass(frozen=True)
class WandRecord:
    """One record as the wand stored it; ``time`` is naive wand (site) time."""

    number: int
    stamp: str
    """The wand's ``yyMMddHHmmss`` as sent (part of the scan id)."""
    time: datetime
    chip: str
    """Upper-case hex chip id: a checkpoint's tag or a guard's card."""


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be read, with the line (or what stood for it) and why."""

    line: str
    reason: str
    stable: bool = True
    """``line`` is what the wand sent for this record: the error's id is derived from it,
    so downloading the same corrupt record again stores nothing new."""


def parse_stamp(stamp: str) -> datetime | None:
    """A wand's ``yyMMddHHmmss`` as a naive datetime (20yy), or None if not a time."""
    if len(stamp) != 12 or not stamp.isdigit():
        return None
    yy, mo, dd, hh, mi, ss = (int(stamp[i : i + 2]) for i in range(0, 12, 2))
    try:
        return datetime(2000 + yy, mo, dd, hh, mi, ss)
    except ValueError:
        return None


def read_record(line: str) -> WandRecord | BadRecord:
    """Parse one record line (``0001261123013000 0F004EBEFC``); a BadRecord says why not."""
    compact = re.sub(r"\s+", "", line)
    if not compact:
        return BadRecord(line, "empty record")
    if len(compact) != 26:
        return BadRecord(line, f"{len(compact)} characters; a record has 26 (4 + 12 + 10)")
    match = _RECORD.fullmatch(compact)
    if match is None:
        return BadRecord(line, "not 4 hex digits + 12 digits + 10 hex digits")
    number_hex, stamp, chip = match.groups()
    number = int(number_hex, 16)
    if number == 0:
        return BadRecord(line, "record number 0 (records count from 1)")
    when = parse_stamp(stamp)
    if when is None:
        return BadRecord(line, f"time {stamp} is not a date and time (yyMMddHHmmss)")
    chip = chip.upper()
    if chip in _BLANK_CHIPS:
        return BadRecord(line, f"blank chip id {chip}")
    return WandRecord(number, stamp, when, chip)


def parse_record(line: str) -> WandRecord | None:
    """The record in ``line``, or None if it is corrupt (``read_record`` says why)."""
    record = read_record(line)
    return record if isinstance(record, WandRecord) else None


def guard_cards(patrol: PatrolSettings) -> dict[str, str]:
    """Personnel card (upper-case chip id) → guard id."""
    return {card.upper(): guard.id for guard in patrol.guards for card in guard.cards}


def build_events(
    wand_id: str,
    records: Sequence[tuple[int, WandRecord | BadRecord]],
    *,
    guards: Mapping[str, str],
    zone: ZoneInfo,
    received_at: datetime,
    skew_s: int | None,
) -> list[Event]:
    """The journal events of one download, in record order (see the module docstring)."""
    events: list[Event] = []
    guard: str | None = None
    for number, record in records:
        if isinstance(record, BadRecord):
            text = repr(record.line)
            if len(text) > _LINE_REPR:
                text = text[: _LINE_REPR - 1] + "…"
            if record.stable:
                digest = hashlib.sha256(f"{number}|{record.line}".encode()).hexdigest()[:20]
                error_id = f"patrol-wand-error:{wand_id}:{digest}"
            else:
                error_id = new_event_id()
            events.append(
                Event(
                    "patrol.wand_error",
                    wand_id,
                    {
                        "wand": wand_id,
                        "record": number,
                        "line": text,
                        "reason": record.reason,
                        "clock_skew_s": skew_s,
                    },
                    received_at=received_at,
                    id=error_id,
                )
            )
            continue
        local = record.time.replace(tzinfo=zone)
        scan_id = f"{wand_id}:{record.stamp}:{record.chip}"
        common = {
            "tag": record.chip,
            "method": "wand",
            "scan_id": scan_id,
            "scanned_at": to_rfc3339(local),
            "clock_skew_s": skew_s,
            "record": record.number,
        }
        card_of = guards.get(record.chip)
        if card_of is not None:
            guard = card_of
            kind, event_id = "patrol.guard_login", f"patrol-guard-login:{scan_id}"
        else:
            kind, event_id = "patrol.scan", f"patrol-scan:{scan_id}"
        events.append(
            Event(
                kind,
                wand_id,
                {**common, "guard": guard},
                device_time=local.astimezone(UTC),
                received_at=received_at,
                id=event_id,
            )
        )
    return events


# ---- the serial line -----------------------------------------------------------------


class CradleError(Exception):
    """A command the cradle did not answer; ``counter`` is the health counter's kind."""

    counter = "error"


class NoAnswer(CradleError):
    counter = "timeout"


class LinkDown(CradleError):
    counter = "link_down"


def checksum(body: str) -> str:
    """XOR of the body's bytes as two upper-case hex digits."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def decode_line(raw: bytes) -> tuple[str, bool] | None:
    """A received line as (body, checksum verified), or None if it is noise."""
    text = _PRINTABLE.sub(b"", raw).strip().decode("ascii")
    if not text:
        return None
    body, star, given = text.rpartition("*")
    if not star:
        return text, False
    if given.upper() == checksum(body) and body:
        return body, True
    return None


Accept = Callable[[str, bool], str | None]
"""Given a line's body and whether its checksum was verified: the reply, or None (noise)."""


def _shape(pattern: re.Pattern[str], body: str, _checked: bool) -> str | None:
    return body if pattern.fullmatch(body) else None


def _ok(body: str, _checked: bool) -> str | None:
    return body if body in ("OK", "ERR") else None


def _record_reply(number: int, body: str, checked: bool) -> str | None:
    """The reply to ``R{number}``: its record, ``ERR``, or a checksummed line that is
    nothing else (a record the wand itself garbled). A well-formed record with
    another number is a late answer to an earlier request: noise."""
    if body == "ERR":
        return body
    if body[:4].upper() == f"{number:04X}":
        return body
    if any(p.fullmatch(body) for p in _REPLY_SHAPES):
        return None
    compact = re.sub(r"\s+", "", body)
    if _RECORD.fullmatch(compact):
        return None
    return body if checked else None


class CradleLine:
    """The cradle's serial port: one command at a time, from worker threads.

    Opened on first use and again after an error (a USB cradle unplugged and
    plugged back gets the same path from udev rules).
    """

    def __init__(
        self, device: str, baudrate: int = 9600, *, timeout_s: float = TIMEOUT_S, retries: int = 1
    ) -> None:
        self.device = device
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.retries = retries
        self.noise_lines = 0
        """Lines ignored since start (garbage, bad checksums, late answers)."""
        self._port: serial.Serial | None = None
        self._lock = threading.Lock()
        self._closing = False

    def exchange(self, command: str, accept: Accept) -> str:
        """Send ``command``, return the first line ``accept`` takes; NoAnswer or LinkDown."""
        with self._lock:
            for _ in range(self.retries + 1):
                reply = self._attempt(command, accept)
                if reply is not None:
                    return reply
            raise NoAnswer(
                f"cradle {self.device}: no answer to {command!r} "
                f"({self.retries + 1} × {self.timeout_s:g} s)"
            )

    def close(self) -> None:
        """Close the port (waits for a running command to notice, ≤ 0.1 s)."""
        self._closing = True
        with self._lock:
            self._close_port()
            self._closing = False

    def _open(self) -> serial.Serial:
        if self._port is None:
            try:
                self._port = serial.Serial(
                    self.device,
                    baudrate=self.baudrate,
                    bytesize=serial.EIGHTBITS,
                    parity=serial.PARITY_NONE,
                    stopbits=serial.STOPBITS_ONE,
                    timeout=0.1,
                    write_timeout=self.timeout_s,
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                raise LinkDown(f"cradle {self.device}: cannot open: {exc}") from exc
        return self._port

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _attempt(self, command: str, accept: Accept) -> str | None:
        port = self._open()
        try:
            port.reset_input_buffer()
            port.write(command.encode("ascii") + b"\r\n")
            port.flush()
            return self._read_reply(port, accept, time.monotonic() + self.timeout_s)
        # termios.error: pyserial's buffer calls on a port whose adapter was unplugged
        except (serial.SerialException, OSError, termios.error) as exc:
            self._close_port()
            raise LinkDown(f"cradle {self.device}: {exc}") from exc

    def _read_reply(self, port: serial.Serial, accept: Accept, deadline: float) -> str | None:
        pending = b""
        while True:
            if self._closing:
                raise LinkDown(f"cradle {self.device}: closing")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            port.timeout = min(remaining, 0.1)
            chunk = port.read(port.in_waiting or 1)
            if not chunk:
                continue
            *lines, pending = _LINE_END.split(pending + chunk)
            if len(pending) > _MAX_LINE:
                pending = b""
                self.noise_lines += 1
            for raw in lines:
                if not raw.strip():
                    continue
                decoded = decode_line(raw)
                reply = None if decoded is None else accept(*decoded)
                if reply is not None:
                    return reply
                self.noise_lines += 1
                log.debug("cradle %s: ignored line %r", self.device, raw[:_LINE_REPR])


# ---- one download --------------------------------------------------------------------


@dataclass
class DownloadResult:
    """What one download did."""

    count: int
    read: int = 0
    scans: int = 0
    logins: int = 0
    errors: int = 0
    stored: int = 0
    """Events new to the journal (0 when every record had been downloaded before)."""
    skew_s: int | None = None
    complete: bool = True
    committed: bool = False
    clock_set: bool = False
    cleared: bool = False
    problem: str | None = None


def _insert_counting(events: Sequence[Event], conn: sqlite3.Connection) -> int:
    before = conn.total_changes
    insert_events(conn, events)
    return conn.total_changes - before


class WandReader:
    """Talks to one cradle and runs downloads (see the module docstring)."""

    def __init__(
        self,
        wand_id: str,
        line: CradleLine,
        journal: Journal,
        clock: Clock,
        zone: ZoneInfo,
        guards: Mapping[str, str],
    ) -> None:
        self.wand_id = wand_id
        self.line = line
        self.journal = journal
        self.clock = clock
        self.zone = zone
        self.guards = dict(guards)
        self._unanswered: Counter[int] = Counter()

    async def _ask(self, command: str, accept: Accept) -> str:
        return await asyncio.to_thread(self.line.exchange, command, accept)

    async def count(self) -> int:
        """How many records the docked wand holds; NoAnswer when none is docked."""
        reply = await self._ask("N?", partial(_shape, _COUNT))
        return int(reply[2:], 16)

    async def wand_clock(self) -> datetime | None:
        """The wand's clock (naive site time), or None if it holds no valid time."""
        reply = await self._ask("T?", partial(_shape, _CLOCK))
        return parse_stamp(reply[2:])

    async def read(self, number: int) -> str:
        """Record ``number``'s line as the wand sent it (``ERR`` for none)."""
        return await self._ask(f"R{number:04X}", partial(_record_reply, number))

    async def set_clock(self) -> datetime | None:
        """Set the wand's clock to the gateway's (site time); the time set, or None."""
        now = self.clock.now()
        # a wand keeps whole seconds: send at the start of one, so it is not up to 1 s slow
        await self.clock.sleep(1 - now.microsecond / 1e6)
        local = self.clock.now().astimezone(self.zone).replace(microsecond=0)
        reply = await self._ask(f"T{local:%y%m%d%H%M%S}", _ok)
        return local if reply == "OK" else None

    async def clear(self) -> bool:
        return await self._ask("C", _ok) == "OK"

    def close(self) -> None:
        """Blocking: close the port (run it in a thread)."""
        self.line.close()

    def forget(self) -> None:
        """The wand left the cradle: forget per-docking state."""
        self._unanswered.clear()

    async def download(self, count: int) -> DownloadResult:
        """Download ``count`` records, commit, set the clock, clear (module docstring)."""
        result = DownloadResult(count)
        received_at = self.clock.now()
        wand_now = None
        try:
            wand_now = await self.wand_clock()
        except CradleError as exc:
            log.warning("wand clock not read wand=%s error=%s", self.wand_id, exc)
        if wand_now is not None:
            skew = wand_now.replace(tzinfo=self.zone) - self.clock.now()
            result.skew_s = round(skew.total_seconds())
        records = await self._read_all(count, result)
        events = build_events(
            self.wand_id,
            records,
            guards=self.guards,
            zone=self.zone,
            received_at=received_at,
            skew_s=result.skew_s,
        )
        kinds = Counter(e.kind for e in events)
        result.read = len(records)
        result.scans = kinds["patrol.scan"]
        result.logins = kinds["patrol.guard_login"]
        result.errors = kinds["patrol.wand_error"]
        if events:
            try:
                result.stored = await self.journal.write(partial(_insert_counting, events))
            except Exception as exc:  # any failure: the records stay on the wand
                result.problem = f"not committed: {exc}"
                log.error(
                    "wand download not committed, wand not cleared wand=%s records=%d error=%s",
                    self.wand_id,
                    len(records),
                    exc,
                )
                return result
        result.committed = True
        if not result.complete:
            return result
        await self._set_clock(result, wand_now)
        if count:
            await self._clear(result)
        return result

    async def _read_all(
        self, count: int, result: DownloadResult
    ) -> list[tuple[int, WandRecord | BadRecord]]:
        records: list[tuple[int, WandRecord | BadRecord]] = []
        for number in range(1, count + 1):
            try:
                line = await self.read(number)
            except NoAnswer as exc:
                self._unanswered[number] += 1
                if self._unanswered[number] >= GIVE_UP_AFTER and await self._answers():
                    reason = f"no answer to R{number:04X} in {GIVE_UP_AFTER} downloads"
                    records.append((number, BadRecord(f"<{reason}>", reason, stable=False)))
                    continue
                result.complete = False
                result.problem = str(exc)
                break
            except LinkDown as exc:
                result.complete = False
                result.problem = str(exc)
                break
            if line == "ERR":
                records.append(
                    (number, BadRecord(line, "the wand has no such record (ERR)", stable=False))
                )
            else:
                records.append((number, read_record(line)))
        return records

    async def _answers(self) -> bool:
        try:
            await self.count()
        except CradleError:
            return False
        return True

    async def _set_clock(self, result: DownloadResult, wand_now: datetime | None) -> None:
        try:
            set_to = await self.set_clock()
        except CradleError as exc:
            set_to = None
            log.warning("wand clock not set wand=%s error=%s", self.wand_id, exc)
        if set_to is None:
            return
        result.clock_set = True
        event = Event(
            "patrol.wand_clock",
            self.wand_id,
            {
                "wand": self.wand_id,
                "wand_time": None
                if wand_now is None
                else to_rfc3339(wand_now.replace(tzinfo=self.zone)),
                "set_to": to_rfc3339(set_to),
                "clock_skew_s": result.skew_s,
            },
            received_at=self.clock.now(),
        )
        try:
            await self.journal.submit(event)
        except JournalError as exc:
            log.error("wand clock correction not journalled wand=%s error=%s", self.wand_id, exc)

    async def _clear(self, result: DownloadResult) -> None:
        try:
            still = await self.count()
            if still != result.count:
                result.problem = f"the wand now holds {still} records, not {result.count}"
                log.warning("wand not cleared wand=%s: %s", self.wand_id, result.problem)
                return
            result.cleared = await self.clear()
        except CradleError as exc:
            result.problem = f"not cleared: {exc}"
            log.warning("wand not cleared wand=%s error=%s", self.wand_id, exc)
            return
        if result.cleared:
            self._unanswered.clear()
        else:
            result.problem = "the wand refused to clear (ERR)"
            log.warning("wand refused to clear wand=%s", self.wand_id)


# ---- the cradle part -----------------------------------------------------------------


class WandPoller:
    """A supervisor part: asks the cradle every ``poll_s`` whether a wand is docked,
    downloads it, and keeps the cradle's health.

    Health: ``online`` once a wand answers; ``degraded`` then ``offline`` when the
    port fails (cannot be opened, I/O errors: a USB cradle unplugged). An empty
    cradle is normal — the wand is out on a round — so by default silence is not
    a failure: it is counted (``no_wand``), shown by ``docked``, logged once when
    the wand leaves, and journals no ``device.health`` change (the plan's
    ``device-offline`` rule would otherwise raise an alarm every round). A passive
    cradle whose cable fell out is silent too and cannot be told apart; set
    ``silence_is_failure`` to count silence as a ``timeout`` failure instead.
    """

    def __init__(
        self,
        reader: WandReader,
        *,
        poll_s: float = POLL_S,
        retry_s: float = RETRY_S,
        offline_after: int = 2,
        silence_is_failure: bool = False,
    ) -> None:
        self.reader = reader
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.silence_is_failure = silence_is_failure
        self.health = DeviceHealth(reader.wand_id, "patrol_wand", offline_after)
        self.docked = False
        self.last: DownloadResult | None = None
        self._retry_at = 0.0
        self._noise_seen = 0

    @property
    def wand_id(self) -> str:
        return self.reader.wand_id

    async def run(self) -> None:
        try:
            while True:
                await self.poll_once()
                await self.reader.clock.sleep(self.poll_s)
        finally:
            await asyncio.to_thread(self.reader.close)

    async def poll_once(self) -> DownloadResult | None:
        """One poll: a download if a wand is docked and has something to do."""
        try:
            count = await self.reader.count()
        except CradleError as exc:
            self._count_noise()
            if self.docked:
                if isinstance(exc, LinkDown):
                    log.info("wand out of reach: cradle line down wand=%s", self.wand_id)
                else:
                    log.info("wand left the cradle wand=%s", self.wand_id)
            self.docked = False
            self.reader.forget()
            if isinstance(exc, NoAnswer) and not self.silence_is_failure:
                self.health.counters["no_wand"] += 1
                return None
            change = self.health.failure(exc.counter, str(exc), self.reader.clock.now())
            await self._report(change, loud=isinstance(exc, LinkDown))
            return None
        await self._report(self.health.success(self.reader.clock.now()))
        arrived, self.docked = not self.docked, True
        if arrived:
            log.info("wand docked wand=%s records=%d", self.wand_id, count)
        elif count == 0 or time.monotonic() < self._retry_at:
            self._count_noise()
            return None
        result = await self.reader.download(count)
        self._count_noise()
        self.last = result
        done = result.complete and result.committed and (result.cleared or count == 0)
        self._retry_at = 0.0 if done else time.monotonic() + self.retry_s
        log.log(
            logging.INFO if done or result.stored else logging.WARNING,
            "wand downloaded wand=%s records=%d scans=%d logins=%d errors=%d new=%d "
            "skew_s=%s clock_set=%s cleared=%s problem=%s",
            self.wand_id,
            result.read,
            result.scans,
            result.logins,
            result.errors,
            result.stored,
            result.skew_s,
            result.clock_set,
            result.cleared,
            result.problem,
        )
        return result

    def _count_noise(self) -> None:
        noise = self.reader.line.noise_lines
        if noise > self._noise_seen:
            self.health.counters["frame_error"] += noise - self._noise_seen
            self._noise_seen = noise

    async def _report(self, change: HealthChange | None, *, loud: bool = False) -> None:
        """Log and journal a health change. A silent cradle (no wand docked) is
        normal and logged at INFO; a port that cannot be used is a WARNING."""
        if change is None:
            return
        if change.state.value == "online":
            log.info("cradle answering wand=%s previous=%s", self.wand_id, change.previous.value)
        else:
            log.log(
                logging.WARNING if loud else logging.INFO,
                "cradle %s wand=%s reason=%s",
                change.state.value,
                self.wand_id,
                change.reason,
            )
        event = Event(
            "device.health", change.device, change.payload(), received_at=self.reader.clock.now()
        )
        try:
            await self.reader.journal.submit(event)
        except JournalError as exc:
            log.error("health change not journalled wand=%s error=%s", self.wand_id, exc)


class WandSide:
    """Every patrol wand cradle of a site: one poller part each."""

    def __init__(self, pollers: list[WandPoller]) -> None:
        self.pollers = pollers

    @classmethod
    def build(
        cls,
        config: SiteConfig,
        journal: Journal,
        clock: Clock,
        *,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
        retry_s: float = RETRY_S,
        silence_is_failure: bool = False,
    ) -> WandSide:
        guards = guard_cards(config.patrol)
        pollers = [
            WandPoller(
                WandReader(
                    wand.id,
                    CradleLine(wand.device, wand.baudrate, timeout_s=timeout_s),
                    journal,
                    clock,
                    config.site.zone,
                    guards,
                ),
                poll_s=poll_s,
                retry_s=retry_s,
                silence_is_failure=silence_is_failure,
            )
            for wand in config.devices.patrol_wands
        ]
        return cls(pollers)

    def parts(self) -> list[tuple[str, PartFactory]]:
        """Supervised parts: ``wand:{id}`` per cradle."""
        return [(f"wand:{p.wand_id}", p.run) for p in self.pollers]

    def devices(self) -> list[DeviceHealth]:
        return [p.health for p in self.pollers]
