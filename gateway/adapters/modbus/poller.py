"""Polling one Modbus link: which device next, and what its answer becomes.

A poller owns one ``ModbusLink`` (one bus or endpoint; links poll in parallel,
one poller each). It always polls the most urgent due device: I/O modules
first (a fire-panel contact must reach the journal within 1 s), then main and
building meters, then household meters. A device that fails is retried soon
while ``degraded`` and with growing intervals once ``offline``, so a dead
meter costs the bus a few timeouts an hour instead of starving the live ones.

Meter values go to the ``MeterBook`` (validation, period closes); an I/O
module's input changes become ``io.input`` events; health changes become
``device.health`` events, logged once each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.adapters.modbus.decode import decode_block
from gateway.adapters.modbus.errors import LinkDown, ModbusError
from gateway.adapters.modbus.link import ModbusLink
from gateway.clock import Clock
from gateway.commands import CommandFailed
from gateway.config import IoModule
from gateway.errors import JournalError
from gateway.events import Event
from gateway.health import DeviceHealth, HealthChange
from gateway.journal.store import Journal
from gateway.meters.book import MeterBook
from gateway.profiles import Block, IoLayout

log = logging.getLogger(__name__)

PRIORITY_IO, PRIORITY_MAIN, PRIORITY_BILLED = 0, 1, 2
DEGRADED_RETRY_S = 10.0
OFFLINE_RETRY_MAX_S = 1800.0


@dataclass
class Polled:
    """One device on the link and its schedule."""

    id: str
    unit: int
    poll_s: float
    priority: int
    health: DeviceHealth
    blocks: tuple[Block, ...] = ()
    io: IoModule | None = None
    layout: IoLayout | None = None
    due: float = 0.0
    offline_polls: int = 0
    inputs: list[int] | None = field(default=None)
    recording: asyncio.Task[None] | None = None  # the last poll's hand-over to the book

    def next_delay(self) -> float:
        """Seconds until the next poll, given the device's health."""
        state = self.health.state.value
        if state == "offline":
            base = max(self.poll_s, DEGRADED_RETRY_S)
            grown = base * float(2 ** min(self.offline_polls, 10))
            return min(max(OFFLINE_RETRY_MAX_S, self.poll_s), grown)
        if state == "degraded":
            return min(self.poll_s, DEGRADED_RETRY_S)
        return self.poll_s


class LinkPoller:
    """Runs as one supervised part per link (see module docstring)."""

    def __init__(
        self,
        link: ModbusLink,
        devices: Iterable[Polled],
        *,
        book: MeterBook,
        journal: Journal,
        clock: Clock,
    ) -> None:
        self.link = link
        self.devices = {d.id: d for d in devices}
        self.book = book
        self.journal = journal
        self.clock = clock
        self._wake = asyncio.Event()
        self._link_down = False  # the last LinkDown is not yet followed by a success

    def poll_now(self, device_ids: Iterable[str]) -> None:
        """Make these devices due at once (e.g. every billed meter at a period boundary)."""
        now = asyncio.get_running_loop().time()
        for device_id in device_ids:
            if device_id in self.devices:
                self.devices[device_id].due = now
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        try:
            while True:
                # Python 3.11's wait_for (in pymodbus and here) can swallow a
                # cancel that lands as an answer arrives; the request stays
                # recorded on the task, so honour it here.
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError
                device = self._most_urgent()
                wait = device.due - loop.time()
                if wait > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)
                    except TimeoutError:
                        pass
                    continue
                await self._poll(device)
                device.due = loop.time() + device.next_delay()
        finally:
            # readings already taken are still recorded (the journal drains them)
            pending = {d.recording for d in self.devices.values() if d.recording is not None}
            if pending:
                await asyncio.wait(pending)
            await self.link.close()

    def _most_urgent(self) -> Polled:
        now = asyncio.get_running_loop().time()
        due = [d for d in self.devices.values() if d.due <= now]
        if due:
            return min(due, key=lambda d: (d.priority, d.due))
        return min(self.devices.values(), key=lambda d: d.due)

    async def _poll(self, device: Polled) -> None:
        try:
            if device.io is not None:
                await self._poll_io(device)
            else:
                await self._poll_meter(device)
        except ModbusError as exc:
            if isinstance(exc, LinkDown):
                # A port that is gone (adapter unplugged) or an endpoint that refuses
                # costs the bus nothing to try: the back-off does not grow, or a bus
                # out for an hour would keep its fire-panel module offline for up to
                # half an hour after it is back.
                self._link_down = True
            elif device.health.state.value == "offline":
                device.offline_polls += 1
            await self._report(device.health.failure(exc.counter, str(exc), self.clock.now()))
            return
        device.offline_polls = 0
        if self._link_down:
            self._link_down = False
            # the link is back: what went offline with it is asked again now
            self.poll_now(d.id for d in self.devices.values() if d.health.state.value != "online")
        await self._report(device.health.success(self.clock.now()))

    async def _poll_meter(self, device: Polled) -> None:
        values: dict[str, Any] = {}
        for block in device.blocks:
            registers = await self.link.read(
                device.unit, block.function, block.address, block.count
            )
            values.update(decode_block(block, registers))
        read_at = self.clock.now()
        # The bus moves on to the next meter while this reading is committed:
        # waiting for the fsync here would leave the link idle for milliseconds
        # per poll. One meter's readings are still recorded strictly in order.
        # (asyncio.wait, not gather: a cancelled gather(return_exceptions=True)
        # swallows the cancellation, and the poller would never stop)
        if device.recording is not None and not device.recording.done():
            await asyncio.wait({device.recording})
        device.recording = asyncio.create_task(self._record(device.id, read_at, values))

    async def _record(self, meter: str, read_at: datetime, values: dict[str, Any]) -> None:
        try:
            await self.book.record_poll(meter, read_at, values)
        except JournalError as exc:
            log.error(
                "reading not recorded meter=%s read_at=%s error=%s",
                meter,
                read_at.isoformat(),
                exc,
            )

    async def _poll_io(self, device: Polled) -> None:
        layout = device.layout
        assert layout is not None and device.io is not None
        bits = await self.link.read(
            device.unit, 2, layout.discrete_inputs_address, layout.discrete_inputs
        )
        previous, device.inputs = device.inputs, bits
        events = []
        for contact in device.io.inputs:
            state = bits[contact.number - 1]
            if previous is not None and previous[contact.number - 1] == state:
                continue
            closed = bool(state)
            events.append(
                Event(
                    "io.input",
                    device.id,
                    {
                        "input": contact.number,
                        "meaning": contact.meaning,
                        "where": contact.where,
                        "name": contact.name,
                        "state": "closed" if closed else "open",
                        "abnormal": closed == (contact.abnormal == "closed"),
                        "initial": previous is None,
                    },
                    received_at=self.clock.now(),
                )
            )
        if events:
            await self.journal.submit_many(events)

    async def set_output(self, device_id: str, output: int, on: bool) -> None:
        device = self.devices[device_id]
        assert device.layout is not None
        if not 1 <= output <= device.layout.coils:
            raise CommandFailed(f"{device_id} has no output {output}")
        try:
            await self.link.write_coils(device.unit, device.layout.coils_address + output - 1, [on])
        except ModbusError as exc:
            raise CommandFailed(f"{device_id} output {output}: {exc}") from exc

    async def _report(self, change: HealthChange | None) -> None:
        if change is None:
            return
        if change.state.value == "online":
            log.info(
                "device recovered device=%s link=%s previous=%s",
                change.device,
                self.link.id,
                change.previous.value,
            )
        else:
            log.warning(
                "device %s device=%s link=%s reason=%s",
                change.state.value,
                change.device,
                self.link.id,
                change.reason,
            )
        await self.journal.submit(
            Event("device.health", change.device, change.payload(), received_at=self.clock.now())
        )
