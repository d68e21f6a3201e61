"""One Modbus link: a TCP endpoint or one RS-485 bus, shared by its devices.

On a link, transactions run strictly one at a time (RS-485 is half-duplex, and
a Modbus TCP gateway in front of a bus is no better). On a serial bus the link
itself keeps the 3.5-character silence between frames, because pymodbus's async
client sends the next request ~1 ms after a reply and real meters drop such
frames (../shared/research/DEVICES.md). Timeouts and retries are the link's
own: pymodbus's defaults (3 s × 4 attempts) let one dead meter stall a bus for
12 s, so pymodbus is run with no retries of its own and the link retries,
counting each failed attempt by kind.

pymodbus reports a CRC error, a truncated frame or a reply from another unit
only as "no answer"; the link watches the raw bytes (``trace_packet``) to tell
these apart, because "the meter is dead" and "the wiring is noisy" send a site
engineer to different places.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerRTU

from gateway.adapters.modbus.errors import (
    EXCEPTION_NAMES,
    ExceptionAnswer,
    FrameError,
    LinkDown,
    ModbusError,
    NoAnswer,
    WrongUnit,
)
from gateway.config import ModbusSerialLink, ModbusTcpLink

log = logging.getLogger(__name__)
# pymodbus logs every failed request at ERROR; the gateway logs device state
# changes itself (down once, recovered once), so pymodbus is kept quiet.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

READ_FUNCTIONS = (1, 2, 3, 4)


def char_time(link: ModbusSerialLink) -> float:
    """Seconds one character takes on the wire (start + 8 data + parity + stop bits)."""
    bits = 1 + 8 + (0 if link.parity == "N" else 1) + link.stopbits
    return bits / link.baudrate


class ModbusLink:
    """A link's client, its lock, its inter-frame silence and its retry policy."""

    def __init__(self, config: ModbusTcpLink | ModbusSerialLink) -> None:
        self.config = config
        self.id = config.id
        self._lock = asyncio.Lock()
        self._rx = bytearray()
        self._quiet_until = 0.0
        if isinstance(config, ModbusSerialLink):
            # Modbus RTU: t3.5 silence, but at least 1.75 ms above 19200 baud.
            self.silence_s = max(3.5 * char_time(config), 0.00175)
            self._client: AsyncModbusTcpClient | AsyncModbusSerialClient = AsyncModbusSerialClient(
                port=config.device,
                baudrate=config.baudrate,
                parity=config.parity,
                stopbits=config.stopbits,
                bytesize=8,
                timeout=config.timeout_s,
                retries=0,
                reconnect_delay=0,  # the link reopens the port itself, once per poll
                trace_packet=self._trace,
            )
        else:
            self.silence_s = 0.0
            self._client = AsyncModbusTcpClient(
                config.host,
                port=config.port,
                framer=FramerType.RTU if config.type == "rtu_over_tcp" else FramerType.SOCKET,
                timeout=config.timeout_s,
                retries=0,
                reconnect_delay=0,  # the poller decides when to try again
                trace_packet=self._trace,
            )
        self.transactions = 0

    @property
    def is_serial(self) -> bool:
        return isinstance(self.config, ModbusSerialLink)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx += data
        return data

    async def close(self) -> None:
        self._client.close()

    async def _ensure_connected(self) -> None:
        if self._client.connected:
            return
        try:
            ok = await asyncio.wait_for(self._client.connect(), self.config.timeout_s + 2)
        except (TimeoutError, OSError, ConnectionException) as exc:
            raise LinkDown(f"link {self.id}: cannot connect: {exc}") from exc
        if not ok:
            raise LinkDown(f"link {self.id}: cannot connect to {self._endpoint()}")

    @property
    def _rtu_frames(self) -> bool:
        """RTU framing (a serial bus, or RTU through a serial device server)."""
        return self.is_serial or self.config.type == "rtu_over_tcp"

    def _endpoint(self) -> str:
        c = self.config
        return c.device if isinstance(c, ModbusSerialLink) else f"{c.host}:{c.port}"

    async def read(self, unit: int, function: int, address: int, count: int) -> list[int]:
        """Read registers (functions 3/4) or bits (1/2, as 0/1 ints); retries per link."""
        if function not in READ_FUNCTIONS:
            raise ValueError(f"function {function} is not a read function")
        return await self._transact(unit, function, address, count, None)

    async def write_coils(self, unit: int, address: int, values: Sequence[bool]) -> None:
        """Write one coil (function 05) or several (15); done when the device confirms."""
        await self._transact(unit, 5 if len(values) == 1 else 15, address, len(values), values)

    async def _transact(
        self, unit: int, function: int, address: int, count: int, values: Sequence[bool] | None
    ) -> list[int]:
        attempts = self.config.retries + 1
        async with self._lock:
            for attempt in range(attempts):
                try:
                    return await self._once(unit, function, address, count, values)
                except (NoAnswer, FrameError, WrongUnit, LinkDown) as exc:
                    if attempt + 1 == attempts:
                        raise
                    log.debug("modbus retry link=%s unit=%d error=%s", self.id, unit, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, unit: int, function: int, address: int, count: int, values: Sequence[bool] | None
    ) -> list[int]:
        await self._ensure_connected()
        wait = self._quiet_until - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        self._rx.clear()
        self.transactions += 1
        client = self._client
        quiet = self.silence_s
        try:
            if function == 3:
                response = await client.read_holding_registers(address, count=count, device_id=unit)
            elif function == 4:
                response = await client.read_input_registers(address, count=count, device_id=unit)
            elif function == 2:
                response = await client.read_discrete_inputs(address, count=count, device_id=unit)
            elif function == 1:
                response = await client.read_coils(address, count=count, device_id=unit)
            elif function == 5:
                assert values is not None
                response = await client.write_coil(address, values[0], device_id=unit)
            else:
                assert values is not None
                response = await client.write_coils(address, list(values), device_id=unit)
        except ModbusIOException as exc:
            error = self._classify(unit, function, address, exc)
            if isinstance(error, NoAnswer | FrameError) and self._rtu_frames:
                # An RTU answer carries no request id: a late one arriving while the
                # next request waits would be taken for that request's answer (same
                # unit and size, other registers: a wrong value on a bill). Keep the
                # line quiet for another timeout so it lands in the gap and is dropped.
                quiet = max(quiet, self.config.timeout_s)
            raise error from None
        except ConnectionException as exc:
            raise LinkDown(f"link {self.id}: connection lost: {exc}") from None
        finally:
            self._quiet_until = time.perf_counter() + quiet
        if response.isError():
            code = int(response.exception_code)
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ExceptionAnswer(
                f"link {self.id} unit {unit}: function {function} address {address}: "
                f"exception {code} ({name})",
                code,
            )
        if function in (3, 4):
            registers = list(response.registers)
            if len(registers) != count:
                raise FrameError(
                    f"link {self.id} unit {unit}: asked {count} registers, got {len(registers)}"
                )
            return registers
        if function in (1, 2):
            return [1 if bit else 0 for bit in response.bits[:count]]
        return []

    def _classify(
        self, unit: int, function: int, address: int, exc: ModbusIOException
    ) -> ModbusError:
        where = f"link {self.id} unit {unit}: function {function} address {address}"
        text = str(exc)
        if "received" in text and "device id" in text:
            return WrongUnit(f"{where}: answer from another unit ({text})")
        rx = bytes(self._rx)
        if not rx:
            return NoAnswer(f"{where}: no answer within {self.config.timeout_s} s")
        if self._rtu_frames:
            if len(rx) >= 4 and rx[0] != unit and _crc_ok(rx):
                return WrongUnit(f"{where}: answer from unit {rx[0]}")
        return FrameError(f"{where}: {len(rx)} bytes but no valid frame (CRC or truncated)")


def _crc_ok(frame: bytes) -> bool:
    crc = FramerRTU.compute_CRC(frame[:-2])
    return crc.to_bytes(2, "big") == frame[-2:]
