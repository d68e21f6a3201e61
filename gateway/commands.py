"""Commands the gateway sends to devices, as narrow interfaces.

The API and (later) the alarm engine drive outputs through these protocols,
never by importing an adapter: a relay on a Modbus I/O module and a gate on
MQTT look the same to whoever asks (../shared/DESIGN.md, "dependencies point
inward").
"""

from __future__ import annotations

from typing import Protocol


class CommandFailed(Exception):
    """The device did not confirm the command; the message says why."""


class OutputCommands(Protocol):
    """Switch a relay output of an I/O module (sounder, beacon, release)."""

    def has_output(self, device: str, output: int) -> bool: ...

    async def set_output(self, device: str, output: int, on: bool) -> None:
        """Return once the device confirmed; raise CommandFailed otherwise."""
        ...


class DeviceCommands(Protocol):
    """Open a door, raise a barrier, hold open, release (gates and barriers)."""

    def supports(self, device: str, action: str) -> bool: ...

    async def command(self, device: str, action: str, *, door: int = 1, duration_s: int = 0) -> str:
        """Return the request id once the device confirmed; raise CommandFailed otherwise."""
        ...
