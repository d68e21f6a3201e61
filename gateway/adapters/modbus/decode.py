"""Registers to values and back, as a profile describes them.

Pure functions on ``struct``: a site gateway decodes thousands of values a
second, and pymodbus' ``convert_from_registers`` is slower and cannot swap the
bytes inside a register (BADC/DCBA) at all.

Orders, for the four bytes ``A B C D`` of a 32-bit value:

* ``word_order = "big"``, ``byte_order = "big"``: ``AB CD`` (ABCD, the Modbus norm)
* ``word_order = "little"``: ``CD AB`` (CDAB: low word first; TUF-2000M)
* ``byte_order = "little"``: ``BA DC`` (BADC: bytes swapped in each register)
* both little: ``DC BA``

Integer types with scale 1.0 decode to ``int``; everything else to ``float``.
A float register holding NaN or infinity (a meter's "no reading") is returned
as it is: judging readings is the meter book's job (``gateway.meters.vee``),
and it needs to see the NaN to say why a reading was refused.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from functools import cache

from gateway.profiles import Block, Part, ValueSpec

_CODES = {
    "u16": "H",
    "s16": "h",
    "u32": "I",
    "s32": "i",
    "u64": "Q",
    "s64": "q",
    "float32": "f",
    "float64": "d",
}
_FLOATS = frozenset({"float32", "float64"})


@cache
def _codec(type_: str, byte_order: str) -> tuple[struct.Struct, struct.Struct]:
    """(registers <-> bytes, bytes <-> value) for one type and byte order.

    Registers are packed big-endian, or little-endian to swap the two bytes of
    each; the value is then read big-endian. Word order is handled by reversing
    the registers before packing.
    """
    code = _CODES[type_]
    words = struct.calcsize(code) // 2
    registers = struct.Struct(("<" if byte_order == "little" else ">") + "H" * words)
    return registers, struct.Struct(">" + code)


_F32 = struct.Struct(">f")


def _shortest_float32(raw: float) -> float:
    """The shortest decimal that is the same float32: what the meter's display shows.

    A float32 of 12345.67 widens to 12345.669921875; billing must see 12345.67,
    or the bill and the meter's display disagree in a dispute.
    """
    if not math.isfinite(raw):
        return raw
    for digits in range(6, 10):
        candidate = float(f"{raw:.{digits}g}")
        if _F32.unpack(_F32.pack(candidate))[0] == raw:
            return candidate
    return raw


def _tidy(value: float) -> float:
    """Drop binary noise from scaling and summing (230.20000000000002 → 230.2)."""
    return float(f"{value:.12g}") if math.isfinite(value) else value


def _decode_part(part: Part, registers: Sequence[int]) -> float | int:
    packer, value = _codec(part.type, part.byte_order)
    if part.word_order == "little":
        registers = registers[::-1]
    raw: float | int = value.unpack(packer.pack(*registers))[0]
    if part.type == "float32":
        raw = _shortest_float32(raw)
    return raw if part.scale == 1.0 else _tidy(raw * part.scale)


def decode_value(spec: ValueSpec, registers: Sequence[int]) -> float | int:
    """The value in ``registers``, exactly the span ``spec.address .. spec.end``.

    A composite value is the sum of its parts (Dynaflox: m³ + mL × 1e-6).
    """
    if len(registers) != spec.count:
        raise ValueError(f'"{spec.name}" spans {spec.count} registers, got {len(registers)}')
    start = spec.address
    total: float | int = 0
    for part in spec.parts:
        offset = part.address - start
        total += _decode_part(part, registers[offset : offset + part.count])
    return _tidy(total) if isinstance(total, float) and len(spec.parts) > 1 else total


def decode_block(block: Block, registers: Sequence[int]) -> dict[str, float | int]:
    """Every value of ``block`` from the registers one read of it returned."""
    if len(registers) != block.count:
        raise ValueError(
            f"block at 0x{block.address:04X} spans {block.count} registers, got {len(registers)}"
        )
    start = block.address
    return {
        spec.name: decode_value(
            spec, registers[spec.address - start : spec.address - start + spec.count]
        )
        for spec in block.values
    }


def _encode_part(part: Part, raw: float | int) -> list[int]:
    packer, value = _codec(part.type, part.byte_order)
    if part.type not in _FLOATS:
        raw = round(raw)
    try:
        words = list(packer.unpack(value.pack(raw)))
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{raw} does not fit a {part.type} ({exc})") from None
    if part.word_order == "little":
        words.reverse()
    return words


def _split(parts: Sequence[Part], value: float | int) -> list[float | int]:
    """Raw values of the parts, in the order the profile lists them.

    Each part but the last takes ``floor(rest / scale)`` and leaves the rest;
    the last takes ``rest / scale`` (rounded if it is an integer type). So the
    parts must be listed from the largest unit down: Dynaflox 1234.56789 m³ →
    1234 (m³, scale 1) and 567890 (mL, scale 1e-6). A lone part is simply
    ``value / scale``.
    """
    raws: list[float | int] = []
    rest = value
    for part in parts[:-1]:
        raw = math.floor(rest / part.scale)
        raws.append(raw)
        rest -= raw * part.scale
    last = parts[-1]
    raws.append(rest if last.scale == 1.0 else rest / last.scale)
    return raws


def encode_value(spec: ValueSpec, value: float | int) -> list[int]:
    """The registers (``spec.address .. spec.end``) a device would hold for ``value``.

    The inverse of ``decode_value`` up to the type's precision; for the
    simulator and tests. Registers between non-adjacent parts are 0. Raises
    ValueError if a raw value does not fit its type (e.g. negative into u32).
    """
    registers = [0] * spec.count
    for part, raw in zip(spec.parts, _split(spec.parts, value), strict=True):
        offset = part.address - spec.address
        registers[offset : offset + part.count] = _encode_part(part, raw)
    return registers
