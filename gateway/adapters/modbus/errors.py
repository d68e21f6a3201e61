"""What can go wrong in one Modbus transaction, as our own exceptions.

Each kind is counted separately per device (a site engineer reads these to
tell a dead meter from a wiring fault from a wrong address)::

    ModbusError
    ├── LinkDown           the TCP endpoint or serial port cannot be opened
    ├── NoAnswer           nothing came back within the link's timeout
    ├── FrameError         bytes came back but not a valid frame (CRC, truncated, garbage)
    ├── WrongUnit          a valid frame came back from another unit id
    └── ExceptionAnswer    the device answered with a Modbus exception (code 1–11)
"""

from __future__ import annotations

from gateway.errors import GatewayError

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusError(GatewayError):
    """A failed Modbus transaction; ``counter`` names its health counter."""

    counter = "error"


class LinkDown(ModbusError):
    counter = "link_down"


class NoAnswer(ModbusError):
    counter = "timeout"


class FrameError(ModbusError):
    counter = "frame_error"


class WrongUnit(ModbusError):
    counter = "wrong_unit"


class ExceptionAnswer(ModbusError):
    """The device refused the request; ``code`` is the Modbus exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.counter = f"exception_{code}"  # counted per code: 2 = wrong address, 6 = busy
