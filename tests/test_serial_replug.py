"""A USB serial adapter unplugged and plugged back in, with real OS objects.

Sites reach their RS-485 meters and their patrol-wand cradles through USB
serial adapters, configured by the stable ``/dev/serial/by-id/...`` symlink
udev makes. Someone pulls the adapter (to re-seat a cable, by accident, a
flaky hub resets it) and plugs it back: the service must not crash, must show
the devices behind it as offline — once, one log line per state change, not
one per failed poll — and must come back by itself when the adapter returns
at the same path, without losing or doubling anything read before the unplug.

How the unplug is made real (``UsbSerialAdapter``): the configured device
path is a symlink in ``tmp_path`` to the slave end of a pty; the simulated
devices (the harness's pymodbus RTU meters, ``SimWand``) sit on the far side
of a bridge thread that copies bytes between the pty's master and the
devices' own line, which stays up across the unplug as a real bus or wand
does. Unplugging stops the bridge, closes the master and removes the
symlink, as the kernel hangs up ``/dev/ttyUSB0`` and removes it: the
gateway's open fd then reads nothing (pyserial: "device reports readiness to
read but returned no data"), writes and termios calls fail with EIO, and
opening the path fails with ENOENT. Plugging back makes a fresh pty and
points the same symlink at it. ``unplug_on`` pulls the adapter when the
gateway sends a given request (which never reaches the devices), for an
unplug in the middle of a poll or a download at a known point.

Two of these found gateway bugs, since fixed: a wand cradle unplugged between
polls ended the wand poller (pyserial raises ``termios.error`` on a hung-up
tty), and a link's devices stayed offline after the adapter was back for as
long as their grown offline back-off (up to 30 min).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import sqlite3
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pymodbus.framer import FramerRTU

from gateway.adapters.modbus import poller as modbus_poller
from gateway.adapters.modbus.decode import encode_value
from gateway.adapters.modbus.link import ModbusLink
from gateway.adapters.modbus.poller import PRIORITY_BILLED, PRIORITY_IO, LinkPoller, Polled
from gateway.adapters.serial.wand import CradleLine, WandPoller, WandReader
from gateway.clock import Clock
from gateway.config import IoInput, IoModule, ModbusSerialLink
from gateway.health import DeviceHealth, DeviceState
from gateway.journal.store import Journal
from gateway.meters.book import MeterBook, MeterInfo
from gateway.profiles import load_profile
from gateway.sim.wand import SimWand
from gateway.supervisor import PartState, Supervisor
from tests.harness.journal import with_journal
from tests.harness.modbus import RtuServerOnPath
from tests.harness.serial_line import open_pty_pair

PROFILES = Path(__file__).parent.parent / "config" / "profiles"
SDM120 = load_profile(PROFILES / "eastron-sdm120.toml")
RELAY = load_profile(PROFILES / "relay-8in8out.toml")
ZONE = ZoneInfo("Asia/Shanghai")
BY_ID = "usb-FTDI_FT232R_USB_UART_A10K3X9P-if00-port0"  # as in /dev/serial/by-id/
POLLER_LOG = "gateway.adapters.modbus.poller"
WAND_LOG = "gateway.adapters.serial.wand"


class UsbSerialAdapter:
    """A USB serial adapter at a fixed by-id ``path`` that a test unplugs and plugs back.

    ``device_fd`` is the devices' side of the line (the RS-485 bus, the cradle's
    wand); it stays open throughout. While plugged in, ``path`` is a symlink to
    the slave end of a raw pty and a thread copies bytes between the pty's
    master and ``device_fd``. The adapter holds its own fd on the slave, so the
    gateway closing and reopening the port does not hang the line up; only an
    unplug does.
    """

    def __init__(self, path: Path, device_fd: int) -> None:
        self.path = path
        self.device_fd = device_fd
        self.pulled = threading.Event()
        """Set when the adapter is out (by ``unplug`` or by ``unplug_on``'s trigger)."""
        self.errors: list[OSError] = []
        """Bridge failures; the tests assert there are none (the line itself is sound)."""
        self._trigger: bytes | None = None
        self._trigger_after = 0.0
        self._master = self._slave = self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UsbSerialAdapter:
        self.plug()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unplug()

    def plug(self) -> None:
        """Plug in: a fresh pty, the same symlink pointed at it, the bridge started."""
        if self._thread is not None:
            raise RuntimeError("the adapter is plugged in")
        self._drain_device()  # what the devices sent meanwhile reached no adapter
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        staging = self.path.with_name(self.path.name + ".new")
        staging.unlink(missing_ok=True)
        staging.symlink_to(os.ttyname(self._slave))
        staging.replace(self.path)  # atomically, as udev does
        self._wake_r, self._wake_w = os.pipe()
        self._trigger = None
        self.pulled.clear()
        self._thread = threading.Thread(target=self._bridge, name="usb-adapter", daemon=True)
        self._thread.start()

    def unplug_on(self, request: bytes, *, after_s: float = 0.0) -> None:
        """Pull the adapter ``after_s`` after the gateway sends ``request``, which never
        reaches the devices: the gateway is left waiting for an answer."""
        self._trigger, self._trigger_after = request, after_s

    def unplug(self) -> None:
        """Pull the adapter now (or finish pulling it, after ``unplug_on`` fired)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        os.write(self._wake_w, b"\0")
        thread.join(timeout=5)
        if thread.is_alive():
            raise RuntimeError("the adapter's bridge thread did not stop")
        os.close(self._wake_r)
        os.close(self._wake_w)
        if not self.pulled.is_set():
            self._pull()

    def _pull(self) -> None:
        """The kernel's part: hang the tty up and remove its device node (the symlink)."""
        os.close(self._slave)
        os.close(self._master)
        self.path.unlink()
        self.pulled.set()

    def _drain_device(self) -> None:
        while select.select([self.device_fd], [], [], 0)[0]:
            if not os.read(self.device_fd, 4096):
                return

    def _bridge(self) -> None:
        master, device, wake = self._master, self.device_fd, self._wake_r
        peer = {master: device, device: master}
        sent = b""
        try:
            while True:
                readable, _, _ = select.select([master, device, wake], [], [])
                if wake in readable:
                    return
                for fd in readable:
                    data = os.read(fd, 4096)
                    if fd == master and self._trigger is not None:
                        sent = (sent + data)[-256:]
                        if self._trigger in sent:
                            if not select.select([wake], [], [], self._trigger_after)[0]:
                                self._pull()
                            return
                    view = memoryview(data)
                    while view:
                        view = view[os.write(peer[fd], view) :]
        except OSError as exc:
            self.errors.append(exc)


async def until(check: Callable[[], Any], within_s: float, what: str) -> float:
    """Wait until ``check()`` is true; return how many seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what}: not within {within_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def stop(task: asyncio.Task[None]) -> BaseException | None:
    """Cancel a part's task and wait for it; what it crashed with, if it had crashed."""
    task.cancel()
    await asyncio.wait({task})
    return None if task.cancelled() else task.exception()


async def journal_events(journal: Journal, kind: str) -> list[dict[str, Any]]:
    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT id, device, payload FROM events WHERE kind = ? ORDER BY seq", (kind,)
        ).fetchall()
        return [{"id": i, "device": d, **json.loads(p)} for i, d, p in rows]

    return await journal.query(read)


def lines(caplog: pytest.LogCaptureFixture, logger: str, *words: str) -> list[str]:
    """Messages of ``logger`` that contain every one of ``words``."""
    return [
        message
        for r in caplog.records
        if r.name == logger and all(w in (message := r.getMessage()) for w in words)
    ]


def gateway_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("gateway") and r.levelno >= logging.ERROR
    ]


# ---- Modbus RTU ----------------------------------------------------------------------

METERS = {"M1": (1, 230.2), "M2": (2, 231.5)}  # meter: (unit id, voltage)


def rtu_request(unit: int, function: int, address: int, count: int) -> bytes:
    body = bytes([unit, function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big")
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def put(server: RtuServerOnPath, unit: int, name: str, value: float) -> None:
    spec = SDM120.value(name)
    server.set_input_registers(unit, spec.address, encode_value(spec, value))


def serial_link(path: Path, *, timeout_s: float = 0.3) -> ModbusSerialLink:
    return ModbusSerialLink(
        id="BUS", type="modbus_rtu", device=str(path), baudrate=9600, timeout_s=timeout_s, retries=0
    )


def test_an_rtu_bus_adapter_unplugged_goes_offline_once_and_recovers_when_plugged_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two SDM120 meters polled every second; the adapter is pulled in the middle
    of M2's poll (its last block's request never reaches the bus) and plugged
    back once both meters are offline."""
    with (
        open_pty_pair() as bus,
        RtuServerOnPath(bus.slave_path, 9600, units=(1, 2), size=400) as server,
        UsbSerialAdapter(tmp_path / BY_ID, bus.master_fd) as adapter,
    ):
        for unit, volts in METERS.values():
            put(server, unit, "voltage", volts)
            put(server, unit, "import_kwh", 1234.5)
        config = serial_link(adapter.path)
        last_block = SDM120.blocks()[-1]

        async def main(journal: Journal) -> None:
            infos = [MeterInfo(m, "electricity", "billed", SDM120, 1.0) for m in METERS]
            book = MeterBook(journal, ZONE, infos)
            await book.load()
            devices = [
                Polled(
                    m,
                    unit,
                    1.0,
                    PRIORITY_BILLED,
                    DeviceHealth(m, "meter", config.offline_after),
                    blocks=SDM120.blocks(),
                )
                for m, (unit, _) in METERS.items()
            ]
            health = {d.id: d.health for d in devices}
            poller = LinkPoller(
                ModbusLink(config), devices, book=book, journal=journal, clock=Clock()
            )

            def all_(state: DeviceState) -> bool:
                return all(h.state is state for h in health.values())

            task = asyncio.create_task(poller.run(), name="modbus:BUS")
            try:
                await until(lambda: all(h.counters["ok"] >= 2 for h in health.values()), 8, "polls")
                assert all_(DeviceState.ONLINE)
                adapter.unplug_on(rtu_request(2, 4, last_block.address, last_block.count))
                await until(adapter.pulled.is_set, 3, "the adapter pulled during M2's poll")
                adapter.unplug()
                before = {r["id"] for r in await journal_events(journal, "meter.reading")}
                went_offline = await until(lambda: all_(DeviceState.OFFLINE), 6, "meters offline")
                assert not task.done()
                for m, h in health.items():
                    assert h.consecutive_failures >= config.offline_after, m
                    assert len(lines(caplog, POLLER_LOG, "device offline", f"device={m} ")) == 1
                assert health["M2"].counters["timeout"] == 1  # the request cut off by the unplug
                for unit, volts in METERS.values():
                    put(server, unit, "voltage", volts - 0.4)  # to be read after the re-plug
                await asyncio.sleep(1.0)  # the service stays up, the meters offline
                assert not task.done() and all_(DeviceState.OFFLINE)
                adapter.plug()
                # an offline device is first retried DEGRADED_RETRY_S (10 s) after it
                # went offline (Polled.next_delay); the adapter is back ~1 s into that
                back = await until(
                    lambda: all_(DeviceState.ONLINE),
                    modbus_poller.DEGRADED_RETRY_S + 3,
                    "meters online after the re-plug",
                )

                def fresh(meter: str, volts: float) -> bool:
                    latest = book.latest(meter)
                    return latest is not None and latest["instant"]["voltage"] == pytest.approx(
                        volts - 0.4, abs=1e-4
                    )

                await until(lambda: all(fresh(m, v) for m, (_, v) in METERS.items()), 3, "fresh")
            finally:
                crash = await stop(task)  # the poller's own stop waits for pending recordings
            assert crash is None, f"the link poller crashed: {crash!r}"
            assert went_offline < 5 and back < modbus_poller.DEGRADED_RETRY_S + 3

            readings = await journal_events(journal, "meter.reading")
            ids = [r["id"] for r in readings]
            assert len(ids) == len(set(ids))
            assert before <= set(ids)  # nothing read before the unplug is lost
            for m, h in health.items():
                mine = [r for r in readings if r["device"] == m]
                # one reading per successful poll: none lost, none doubled, and the poll
                # the unplug cut in half left no partial reading
                assert len(mine) == h.counters["ok"]
                read_at = [datetime.fromisoformat(r["read_at"]) for r in mine]
                assert read_at == sorted(set(read_at))
            changes = await journal_events(journal, "device.health")
            for m in METERS:
                mine = [c for c in changes if c["device"] == m]
                assert [c["state"] for c in mine] == ["online", "degraded", "offline", "online"]
                assert "cannot connect" in mine[2]["reason"]

        with caplog.at_level(logging.INFO, logger="gateway"):
            with_journal(tmp_path / "journal.db", main)
    for m in METERS:
        # one line per state change, in order, however many polls failed
        changes = lines(caplog, POLLER_LOG, f"device={m} ")
        assert [line.split(" device=")[0] for line in changes] == [
            "device recovered",
            "device degraded",
            "device offline",
            "device recovered",
        ], changes
        assert changes[-1].endswith("previous=offline")
    assert gateway_errors(caplog) == []
    assert adapter.errors == []


FIRE = IoInput(number=1, meaning="fire_panel_alarm", where="消防控制室")


def test_an_io_module_is_back_within_seconds_of_the_adapter_however_long_it_was_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time scaled down 40×: DEGRADED_RETRY_S 10 s → 0.25 s, so an adapter out
    for ~4.5 s stands for one out for 3 minutes (offline retries after 0.25,
    0.5, 1, 2 s, then a 4 s wait: 10, 20, 40, 80 s, then 160 s at full scale).
    A fire alarm raised once the adapter is back must reach the journal within
    2 s (8 scaled retry intervals; the module polls every 0.1 s)."""
    monkeypatch.setattr(modbus_poller, "DEGRADED_RETRY_S", 0.25)
    io = IoModule(
        id="IO-1", link="BUS", unit_id=3, profile="relay-8in8out", poll_s=0.1, inputs=[FIRE]
    )
    with (
        open_pty_pair() as bus,
        RtuServerOnPath(bus.slave_path, 9600, units=(3,), size=16) as server,
        UsbSerialAdapter(tmp_path / BY_ID, bus.master_fd) as adapter,
    ):
        config = serial_link(adapter.path, timeout_s=0.2)

        layout = RELAY.io
        assert layout is not None

        async def main(journal: Journal) -> None:
            health = DeviceHealth(io.id, "io_module", config.offline_after)
            device = Polled(io.id, 3, io.poll_s, PRIORITY_IO, health, io=io, layout=layout)
            book = MeterBook(journal, ZONE, [])
            poller = LinkPoller(
                ModbusLink(config), [device], book=book, journal=journal, clock=Clock()
            )

            async def fire_alarms() -> list[dict[str, Any]]:
                return [
                    e
                    for e in await journal_events(journal, "io.input")
                    if e["state"] == "closed" and not e["initial"]
                ]

            task = asyncio.create_task(poller.run(), name="modbus:BUS")
            try:
                await until(lambda: health.state is DeviceState.ONLINE, 5, "module online")
                adapter.unplug()
                await until(lambda: health.state is DeviceState.OFFLINE, 3, "module offline")
                await asyncio.sleep(4.5)
                adapter.plug()
                server.set_discrete_inputs(3, layout.discrete_inputs_address, [True])
                plugged = time.monotonic()
                while not await fire_alarms():
                    assert time.monotonic() - plugged < 2.0, (
                        f"no fire alarm 2 s after the re-plug; module {health.state.value}, "
                        f"next poll in {device.due - asyncio.get_running_loop().time():.1f} s"
                    )
                    await asyncio.sleep(0.05)
            finally:
                crash = await stop(task)
            assert crash is None, f"the link poller crashed: {crash!r}"

        with_journal(tmp_path / "journal.db", main)
    assert adapter.errors == []


# ---- patrol wand cradle --------------------------------------------------------------

WAND = "W1"
CARD_G01 = "0F00AA0001"
GUARDS = {CARD_G01: "G01"}
ROUND_A = ["0F004EBEFC", "0F004EBEFD"]
ROUND_B = ["0F004EBEFE", "0F004EBEFF"]


class IdleClock(Clock):
    """The real clock, telling whether its user sleeps (the wand poller between
    polls: no command is on the line, an unplug now finds the port idle)."""

    def __init__(self) -> None:
        self.sleeping = False

    async def sleep(self, seconds: float) -> None:
        self.sleeping = True
        try:
            await super().sleep(seconds)
        finally:
            self.sleeping = False


@contextmanager
def cradle_side(sim: SimWand) -> Iterator[int]:
    """The cradle's end of the wand's line: an fd on the simulated wand's tty."""
    fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
    try:
        yield fd
    finally:
        os.close(fd)


def walk(sim: SimWand, chips: list[str], start: datetime) -> None:
    """A round on the wand: the guard's card, then the checkpoints a minute apart."""
    sim.add_scan(CARD_G01, start)
    for i, chip in enumerate(chips):
        sim.add_scan(chip, start + timedelta(minutes=i + 1))


def wand_poller(adapter: UsbSerialAdapter, journal: Journal, clock: Clock) -> WandPoller:
    line = CradleLine(str(adapter.path), 9600, timeout_s=0.3)
    return WandPoller(WandReader(WAND, line, journal, clock, ZONE, GUARDS), poll_s=0.2)


async def patrol_records(journal: Journal) -> list[str]:
    """The chips of the journal's guard logins and scans, in journal order."""
    scans = await journal_events(journal, "patrol.scan")
    logins = await journal_events(journal, "patrol.guard_login")
    ids = [e["id"] for e in scans + logins]
    assert len(ids) == len(set(ids))
    return sorted(e["tag"] for e in scans + logins)


def test_a_wand_cradle_unplugged_and_plugged_back_downloads_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Run as the service runs it (a supervised part). The first download is
    committed but the wand refuses the clear, so round A is still on it when
    the cradle is plugged back: downloaded again, it must add nothing."""
    with (
        SimWand(zone=ZONE) as sim,
        cradle_side(sim) as fd,
        UsbSerialAdapter(tmp_path / BY_ID, fd) as adapter,
    ):
        walk(sim, ROUND_A, sim.clock - timedelta(hours=2))
        sim.refuse_clear = 1

        async def main(journal: Journal) -> None:
            poller = wand_poller(adapter, journal, Clock())
            supervisor = Supervisor()
            supervisor.add(f"wand:{WAND}", poller.run)
            halt = asyncio.Event()
            service = asyncio.create_task(supervisor.run(halt), name="supervisor")
            try:
                await until(lambda: poller.last is not None, 5, "first download")
                assert poller.last is not None and poller.last.stored == 3
                assert not poller.last.cleared and len(sim.records) == 3
                adapter.unplug()
                walk(sim, ROUND_B, sim.clock - timedelta(minutes=30))  # out on a round
                await until(lambda: poller.health.state is DeviceState.OFFLINE, 3, "offline")
                failed = poller.health.counters["link_down"]
                await asyncio.sleep(1.0)  # polls keep failing, every 0.2 s
                assert poller.health.counters["link_down"] >= failed + 3
                assert (poller.health.state, service.done()) == (DeviceState.OFFLINE, False)
                assert len(lines(caplog, WAND_LOG, "cradle offline", f"wand={WAND}")) == 1
                adapter.plug()
                await until(lambda: sim.records == [], 5, "downloaded and cleared after re-plug")
                assert poller.health.state is DeviceState.ONLINE
                assert not service.done()
                assert supervisor.health()[f"wand:{WAND}"].state is PartState.RUNNING
            finally:
                halt.set()
                await asyncio.wait_for(service, 5)
            last = poller.last
            assert last is not None and last.read == 6 and last.stored == 3 and last.cleared
            assert await patrol_records(journal) == sorted([CARD_G01, CARD_G01, *ROUND_A, *ROUND_B])
            changes = await journal_events(journal, "device.health")
            assert [c["state"] for c in changes] == ["online", "degraded", "offline", "online"]
            assert "No such file" in changes[2]["reason"]

        with caplog.at_level(logging.INFO, logger="gateway"):
            with_journal(tmp_path / "journal.db", main)
    mine = lines(caplog, WAND_LOG, f"wand={WAND}")
    for change in ("cradle degraded", "cradle offline", "previous=offline", "cradle line down"):
        assert len([m for m in mine if change in m]) == 1, (change, mine)
    assert adapter.errors == []


def test_a_cradle_unplugged_in_the_middle_of_a_download_loses_and_doubles_no_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The adapter is pulled while the gateway waits for record 2 of 3 (0.1 s
    into its 0.3 s timeout; an unplug just before it waits is the test below):
    record 1 is committed, the wand is neither set nor cleared; after the
    re-plug all three are downloaded again and the journal holds each once."""
    with (
        SimWand(zone=ZONE) as sim,
        cradle_side(sim) as fd,
        UsbSerialAdapter(tmp_path / BY_ID, fd) as adapter,
    ):
        walk(sim, ROUND_A, sim.clock - timedelta(hours=2))
        adapter.unplug_on(b"R0002\r\n", after_s=0.1)

        async def main(journal: Journal) -> None:
            poller = wand_poller(adapter, journal, Clock())
            task = asyncio.create_task(poller.run(), name=f"wand:{WAND}")
            try:
                await until(adapter.pulled.is_set, 5, "the adapter pulled during the download")
                adapter.unplug()
                await until(lambda: poller.health.state is DeviceState.OFFLINE, 3, "offline")
                cut = poller.last
                assert cut is not None and cut.committed and not cut.complete
                assert (cut.read, cut.stored, cut.clock_set, cut.cleared) == (1, 1, False, False)
                assert await patrol_records(journal) == [CARD_G01]
                assert "C" not in sim.commands and len(sim.records) == 3
                assert not task.done()
                adapter.plug()
                await until(lambda: sim.records == [], 5, "downloaded and cleared after re-plug")
                assert poller.health.state is DeviceState.ONLINE
            finally:
                crash = await stop(task)
            assert crash is None, f"the wand poller crashed: {crash!r}"
            again = poller.last
            assert again is not None and (again.read, again.stored) == (3, 2) and again.cleared
            assert await patrol_records(journal) == sorted([CARD_G01, *ROUND_A])

        with caplog.at_level(logging.INFO, logger="gateway"):
            with_journal(tmp_path / "journal.db", main)
    assert len(lines(caplog, WAND_LOG, "cradle offline", f"wand={WAND}")) == 1
    assert gateway_errors(caplog) == []
    assert adapter.errors == []


def test_a_wand_poller_keeps_running_when_its_cradle_is_unplugged_between_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        SimWand(zone=ZONE) as sim,
        cradle_side(sim) as fd,
        UsbSerialAdapter(tmp_path / BY_ID, fd) as adapter,
    ):

        async def main(journal: Journal) -> None:
            clock = IdleClock()
            poller = wand_poller(adapter, journal, clock)
            task = asyncio.create_task(poller.run(), name=f"wand:{WAND}")
            try:
                await until(lambda: poller.last is not None, 5, "the docked wand read")
                await until(lambda: clock.sleeping, 2, "the poller between polls")
                adapter.unplug()  # the port open, no command on it
                await until(
                    lambda: poller.health.state is DeviceState.OFFLINE or task.done(), 3, "offline"
                )
            finally:
                crash = await stop(task)
            assert crash is None, f"the wand poller crashed: {crash!r}"
            assert poller.health.counters["link_down"] >= 2

        with caplog.at_level(logging.INFO, logger="gateway"):
            with_journal(tmp_path / "journal.db", main)
    assert gateway_errors(caplog) == []
    assert adapter.errors == []
