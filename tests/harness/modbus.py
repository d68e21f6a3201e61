"""Real pymodbus servers simulating site meters, for sync and async tests alike.

Each server runs pymodbus' own asyncio server on a private event loop in a
background thread, so a plain (sync) test, the gateway's own loop and the
server never share a loop. Register values are changed from the test thread
through ``set_*`` methods that hop onto the server's loop, so they never race
with a request being served.

Datastore: pymodbus 3.16 deprecates ``ModbusDeviceContext`` /
``ModbusServerContext`` (they log a deprecation warning and are removed in
v4), so this uses the new ``SimDevice``/``SimData`` model with four separate
blocks per unit (coils, discrete inputs, holding registers, input registers),
each covering addresses ``0 .. size-1``, as on a typical meter.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any, Literal, Self, TypeVar

import pytest
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.server import ModbusTcpServer as PymodbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from gateway.sim.ports import LOCALHOST, free_tcp_port
from tests.harness.serial_line import null_modem

log = logging.getLogger(__name__)

RegisterTable = Literal["holding", "input"]
DEFAULT_UNITS: tuple[int, ...] = (1, 2)
DEFAULT_SIZE = 200
CALL_TIMEOUT_S = 5.0

# Function codes only select the block inside pymodbus' SimRuntime.
_FC_COILS, _FC_DISCRETE_INPUTS, _FC_HOLDING, _FC_INPUT = 1, 2, 3, 4
_FC_REGISTERS: dict[RegisterTable, int] = {"holding": _FC_HOLDING, "input": _FC_INPUT}

_T = TypeVar("_T")


def float32_to_registers(value: float) -> list[int]:
    """Encode ``value`` as an IEEE-754 float32 in two registers, big-endian (ABCD)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def _unit_device(unit: int, size: int) -> SimDevice:
    """A unit with four separate, zero-filled blocks covering ``0 .. size-1``.

    Separate blocks (the 4-tuple) mean coil N and holding register N are
    different things, as on real meters; bit blocks are rounded up to 16 bits.
    """
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, count=size, values=False, datatype=DataType.BITS)],
            [SimData(0, count=size, values=False, datatype=DataType.BITS)],
            [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
        ),
    )


class _KnownUnitsSimCore(SimCore):
    """SimCore that reports an unconfigured unit id as missing.

    Stock SimCore raises KeyError for it, which the request handler answers
    with DEVICE_FAILURE (0x04) and an error traceback. NoSuchIdException makes
    it answer GATEWAY_NO_RESPONSE (0x0B) like a real TCP/RTU gateway, or stay
    silent with ``ignore_missing_devices`` like a dead unit on an RS-485 bus.
    """

    def _require(self, device_id: int) -> None:
        if device_id not in self.devices:
            raise NoSuchIdException(f"unit {device_id} is not simulated")

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> Any:
        self._require(device_id)
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Any
    ) -> Any:
        self._require(device_id)
        return await super().async_setValues(device_id, func_code, address, values)


class _ThreadedModbusServer:
    """Lifecycle and datastore access shared by the TCP and RTU harnesses."""

    def __init__(self, units: Iterable[int], size: int, ignore_missing_units: bool) -> None:
        self.units = tuple(units)
        self.size = size
        self.ignore_missing_units = ignore_missing_units
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusBaseServer | None = None

    def _create_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        """Build the pymodbus server; runs on the server's loop (pymodbus needs one)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the loop thread and the server; return once it accepts requests."""
        if self._loop is not None:
            raise RuntimeError("server already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop,
            args=(self._loop,),
            name=f"{type(self).__name__}-loop",
            daemon=True,
        )
        self._thread.start()
        try:
            self._call(self._async_start())
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _async_start(self) -> None:
        devices = [_unit_device(unit, self.size) for unit in self.units]
        server = self._create_server(devices)
        server.context = _KnownUnitsSimCore(devices)
        await server.serve_forever(background=True)
        self._server = server
        log.info("%s serving units %s", self, self.units)

    async def _async_stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
        # pymodbus answers each request in its own task; one caught mid-flight
        # by the shutdown must be finished here, or closing the loop warns
        # "Task was destroyed but it is pending" (an error in this suite).
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close the server and all client connections, then stop and join the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._async_stop())
        finally:
            self._server = None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=CALL_TIMEOUT_S)
            self._loop = self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"{thread.name} did not stop")

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the server's loop and wait for its result from the calling thread."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=CALL_TIMEOUT_S)

    def _context(self) -> SimCore:
        if self._server is None:
            raise RuntimeError("server is not running")
        return self._server.context  # type: ignore[return-value]

    async def _async_set(
        self, unit: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> None:
        error = await self._context().async_setValues(unit, func_code, address, values)
        if error is not None:
            raise ValueError(
                f"unit {unit} fc {func_code}: cannot set {len(values)} value(s) "
                f"at {address}: {error!r}"
            )

    async def _async_get(self, unit: int, func_code: int, address: int, count: int) -> list[Any]:
        values = await self._context().async_getValues(unit, func_code, address, count)
        if isinstance(values, list):
            return values
        raise ValueError(
            f"unit {unit} fc {func_code}: cannot read {count} value(s) at {address}: {values!r}"
        )

    def _set_registers(
        self, unit: int, func_code: int, address: int, values: Sequence[int]
    ) -> None:
        registers = [int(value) for value in values]
        if not registers or any(not 0 <= value <= 0xFFFF for value in registers):
            raise ValueError(f"registers must be a non-empty list of 0..65535, got {values!r}")
        self._call(self._async_set(unit, func_code, address, registers))

    def _set_bits(self, unit: int, func_code: int, address: int, values: Sequence[bool]) -> None:
        if not values:
            raise ValueError("values must not be empty")
        self._call(self._async_set(unit, func_code, address, [bool(value) for value in values]))

    def set_holding_registers(self, unit: int, address: int, values: Sequence[int]) -> None:
        """Set holding registers (16-bit unsigned) starting at ``address``."""
        self._set_registers(unit, _FC_HOLDING, address, values)

    def set_input_registers(self, unit: int, address: int, values: Sequence[int]) -> None:
        """Set input registers (16-bit unsigned) starting at ``address``."""
        self._set_registers(unit, _FC_INPUT, address, values)

    def set_coils(self, unit: int, address: int, values: Sequence[bool]) -> None:
        """Set coils starting at ``address``."""
        self._set_bits(unit, _FC_COILS, address, values)

    def set_discrete_inputs(self, unit: int, address: int, values: Sequence[bool]) -> None:
        """Set discrete inputs starting at ``address``."""
        self._set_bits(unit, _FC_DISCRETE_INPUTS, address, values)

    def set_float32(
        self, unit: int, address: int, value: float, *, table: RegisterTable = "input"
    ) -> None:
        """Store ``value`` as a big-endian (ABCD) float32 at ``address`` and ``address + 1``."""
        self._set_registers(unit, _FC_REGISTERS[table], address, float32_to_registers(value))

    def get_holding_registers(self, unit: int, address: int, count: int = 1) -> list[int]:
        """Read holding registers as the server holds them, e.g. after a client wrote them."""
        return self._call(self._async_get(unit, _FC_HOLDING, address, count))

    def get_coils(self, unit: int, address: int, count: int = 1) -> list[bool]:
        """Read coils as the server holds them, e.g. after a client wrote them."""
        return self._call(self._async_get(unit, _FC_COILS, address, count))


class ModbusTcpServer(_ThreadedModbusServer):
    """A pymodbus Modbus TCP server on ``host:port`` (a free port by default).

    Unconfigured unit ids get exception 0x0B (gateway target failed to
    respond), or no answer at all with ``ignore_missing_units=True``.
    """

    def __init__(
        self,
        units: Iterable[int] = DEFAULT_UNITS,
        *,
        host: str = LOCALHOST,
        port: int | None = None,
        size: int = DEFAULT_SIZE,
        ignore_missing_units: bool = False,
    ) -> None:
        super().__init__(units, size, ignore_missing_units)
        self.host = host
        self.port = port or free_tcp_port()

    def __repr__(self) -> str:
        return f"ModbusTcpServer({self.host}:{self.port})"

    def _create_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        return PymodbusTcpServer(
            devices,
            address=(self.host, self.port),
            ignore_missing_devices=self.ignore_missing_units,
        )


class ModbusRtuServer(_ThreadedModbusServer):
    """A pymodbus Modbus RTU server at one end of a software null-modem cable.

    The code under test opens ``client_path`` (a pty, like ``/dev/ttyUSB0``);
    the server holds the other end. A pty ignores the baud rate, so requests
    are answered immediately whatever ``baudrate`` says. Each ``start()``
    creates a new line, so ``client_path`` changes across a restart.
    """

    def __init__(
        self,
        units: Iterable[int] = DEFAULT_UNITS,
        *,
        baudrate: int = 9600,
        size: int = DEFAULT_SIZE,
        ignore_missing_units: bool = False,
    ) -> None:
        super().__init__(units, size, ignore_missing_units)
        self.baudrate = baudrate
        self.client_path = ""
        self._server_path = ""
        self._line = ExitStack()

    def start(self) -> None:
        """Create the null-modem line, then start the server on its far end."""
        if self._loop is not None:
            raise RuntimeError("server already started")
        self._server_path, self.client_path = self._line.enter_context(null_modem())
        try:
            super().start()
        except BaseException:
            self._line.close()
            raise

    def stop(self) -> None:
        """Stop the server, then tear down the line."""
        try:
            super().stop()
        finally:
            self._line.close()

    def __repr__(self) -> str:
        return f"ModbusRtuServer({self._server_path} <-> client {self.client_path})"

    def _create_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        return ModbusSerialServer(
            devices,
            framer=FramerType.RTU,
            port=self._server_path,
            baudrate=self.baudrate,
            ignore_missing_devices=self.ignore_missing_units,
        )


class RtuServerOnPath(_ThreadedModbusServer):
    """The harness' pymodbus RTU server, but on a given tty path (one end of the emulator)."""

    def __init__(
        self, path: str, baudrate: int, *, units: Iterable[int] = (1,), size: int = 10
    ) -> None:
        super().__init__(units=units, size=size, ignore_missing_units=False)
        self.path = path
        self.baudrate = baudrate

    def _create_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        return ModbusSerialServer(
            devices, framer=FramerType.RTU, port=self.path, baudrate=self.baudrate
        )


@pytest.fixture
def modbus_server() -> Iterator[ModbusTcpServer]:
    """A Modbus TCP server simulating units 1 and 2 on a free port of 127.0.0.1."""
    with ModbusTcpServer() as server:
        yield server


@pytest.fixture
def modbus_rtu_server() -> Iterator[ModbusRtuServer]:
    """A Modbus RTU server simulating units 1 and 2; clients open ``server.client_path``."""
    with ModbusRtuServer() as server:
        yield server
