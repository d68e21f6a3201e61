"""Registers to values and back: every type, order, scale and composite.

A wrong decode gives a plausible number and no error, so each case pins the
exact registers a real device sends (the Eastron check frame among them) and
the value they mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from gateway.adapters.modbus.decode import decode_block, decode_value, encode_value
from gateway.profiles import Block, Part, ValueSpec, load_profile, load_profiles

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"
CHECK_FRAME = [0x4366, 0x3334]  # Eastron: "01 04 04 43 66 33 34 …" = 230.2 V
FLOAT32_230_2 = [0x4366, 0x3333]  # the nearest float32 to 230.2: one step below the frame


def spec(
    type_: str,
    *,
    scale: float = 1.0,
    word_order: str = "big",
    byte_order: str = "big",
    address: int = 0,
) -> ValueSpec:
    """A one-part value for decoding tests."""
    part = Part(address, type_, scale, word_order, byte_order)
    return ValueSpec("v", 3, (part,), "", False, None, None, None, None)


def composite(*parts: Part, name: str = "total") -> ValueSpec:
    return ValueSpec(name, 3, parts, "m3", True, None, 3.0, None, None)


# ---- the check frame and word order ------------------------------------------------


def test_check_frame_decodes_to_230_2_volts_with_the_sdm120_profile() -> None:
    voltage = load_profile(PROFILES / "eastron-sdm120.toml").value("voltage")
    assert decode_value(voltage, CHECK_FRAME) == pytest.approx(230.2, rel=1e-6)


def test_cdab_registers_read_as_abcd_give_a_tiny_wrong_number_without_error() -> None:
    cdab = CHECK_FRAME[::-1]
    as_abcd = decode_value(spec("float32"), cdab)
    assert as_abcd == pytest.approx(4.197e-08, rel=1e-3)
    assert decode_value(spec("float32", word_order="little"), cdab) == pytest.approx(230.2)


def test_tuf_2000m_profile_reads_cdab() -> None:
    flow = load_profile(PROFILES / "tuf-2000m.toml").value("flow_m3h")
    assert decode_value(flow, CHECK_FRAME[::-1]) == pytest.approx(230.2)


# ---- every type -------------------------------------------------------------------


def test_float32_reads_as_the_meter_displays_it() -> None:
    """Billing sees 12345.67, not the float32's binary expansion 12345.669921875."""
    for shown in (12345.67, 0.01, 99999.9, 230.2, 1.0e-5, 3.4e38):
        registers = encode_value(spec("float32"), shown)
        assert decode_value(spec("float32"), registers) == shown
    assert decode_value(spec("float32", scale=0.1), encode_value(spec("float32"), 2302.0)) == 230.2


@pytest.mark.parametrize(
    ("type_", "registers", "expected"),
    [
        ("u16", [0xFFFF], 65535),
        ("s16", [0xFFFF], -1),
        ("s16", [0x8000], -32768),
        ("u32", [0x0001, 0x0000], 65536),
        ("u32", [0xFFFF, 0xFFFF], 4294967295),
        ("s32", [0xFFFF, 0xFFFE], -2),
        ("u64", [0x0123, 0x4567, 0x89AB, 0xCDEF], 0x0123456789ABCDEF),
        ("u64", [0xFFFF] * 4, 2**64 - 1),
        ("s64", [0xFFFF] * 4, -1),
        ("s64", [0x8000, 0, 0, 0], -(2**63)),
        # float32 decodes to the shortest decimal with the same bits (-230.20001220703125)
        ("float32", [0xC366, 0x3334], -230.20001),
        ("float64", [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
        ("float64", [0xC009, 0x21FB, 0x5444, 0x2D18], -math.pi),
    ],
)
def test_every_type_decodes_big_endian(
    type_: str, registers: list[int], expected: float | int
) -> None:
    value = decode_value(spec(type_), registers)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("type_", "abcd"),
    [
        ("u32", [0x0001, 0x0002]),
        ("s32", [0xFFFF, 0xFFFE]),
        ("u64", [0x0123, 0x4567, 0x89AB, 0xCDEF]),
        ("float64", [0x4009, 0x21FB, 0x5444, 0x2D18]),
    ],
)
def test_little_word_order_reverses_all_registers(type_: str, abcd: list[int]) -> None:
    expected = decode_value(spec(type_), abcd)
    assert decode_value(spec(type_, word_order="little"), abcd[::-1]) == expected


def test_little_byte_order_swaps_the_bytes_of_each_register() -> None:
    badc = [0x6643, 0x3433]
    assert decode_value(spec("float32", byte_order="little"), badc) == pytest.approx(230.2)
    dcba = [0x3433, 0x6643]
    both = spec("float32", word_order="little", byte_order="little")
    assert decode_value(both, dcba) == pytest.approx(230.2)
    assert decode_value(spec("u16", byte_order="little"), [0x3412]) == 0x1234


# ---- scale and result types ---------------------------------------------------------


def test_scale_multiplies_and_makes_a_float() -> None:
    value = decode_value(spec("u16", scale=0.1), [2302])
    assert isinstance(value, float)
    assert value == pytest.approx(230.2)
    assert decode_value(spec("s16", scale=0.01), [0xFFFF]) == pytest.approx(-0.01)


def test_integer_with_scale_one_stays_int_and_float_type_stays_float() -> None:
    assert type(decode_value(spec("u32"), [0, 7])) is int
    assert type(decode_value(spec("float32"), [0x3F80, 0])) is float  # 1.0


def test_dtsu666_scaled_float_voltage() -> None:
    voltage = load_profile(PROFILES / "chint-dtsu666.toml").value("voltage_l1")
    registers = encode_value(spec("float32"), 2302.0)  # the meter sends 0.1 V units
    assert decode_value(voltage, registers) == pytest.approx(230.2)


@pytest.mark.parametrize(
    ("registers", "check"),
    [([0x7FC0, 0x0000], math.isnan), ([0x7F80, 0x0000], math.isinf)],
)
def test_nan_and_infinity_are_returned_as_they_are(
    registers: list[int], check: Callable[[float], bool]
) -> None:
    assert check(decode_value(spec("float32"), registers))
    assert check(decode_value(spec("float32", scale=0.1), registers))


def test_wrong_number_of_registers_is_an_error() -> None:
    with pytest.raises(ValueError, match='"v" spans 2 registers, got 1'):
        decode_value(spec("float32"), [0x4366])


# ---- composite values -------------------------------------------------------------------


def test_dynaflox_forward_total_is_m3_plus_ml() -> None:
    forward = load_profile(PROFILES / "dynaflox-ultrad.toml").value("forward_m3")
    assert (forward.address, forward.end) == (2, 6)
    registers = [0, 1234, 567890 >> 16, 567890 & 0xFFFF]
    assert decode_value(forward, registers) == pytest.approx(1234.56789, abs=1e-9)


def test_composite_parts_need_not_be_adjacent_or_in_address_order() -> None:
    total = composite(Part(4, "u16", 1.0, "big", "big"), Part(0, "u16", 0.001, "big", "big"))
    assert (total.address, total.count) == (0, 5)
    assert decode_value(total, [250, 9, 9, 9, 12]) == pytest.approx(12.25)
    assert encode_value(total, 12.25) == [250, 0, 0, 0, 12]


def test_composite_of_integers_with_scale_one_is_int() -> None:
    total = composite(Part(0, "u16", 1.0, "big", "big"), Part(1, "u16", 1.0, "big", "big"))
    assert decode_value(total, [2, 3]) == 5
    assert type(decode_value(total, [2, 3])) is int


def test_encoding_a_composite_fills_parts_from_the_largest_unit_down() -> None:
    forward = load_profile(PROFILES / "dynaflox-ultrad.toml").value("forward_m3")
    registers = encode_value(forward, 1234.56789)
    assert registers == [0, 1234, 567890 >> 16, 567890 & 0xFFFF]
    assert encode_value(forward, 0.000001) == [0, 0, 0, 1]


# ---- encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_spec", "value", "registers"),
    [
        (spec("float32"), 230.2, FLOAT32_230_2),
        (spec("float32", word_order="little"), 230.2, FLOAT32_230_2[::-1]),
        (spec("float32", byte_order="little"), 230.2, [0x6643, 0x3333]),
        (spec("s32"), -2, [0xFFFF, 0xFFFE]),
        (spec("u16", scale=0.1), 230.2, [2302]),
        (spec("s64", word_order="little"), -(2**40), [0, 0, 0xFF00, 0xFFFF]),
    ],
)
def test_encode_gives_the_devices_registers(
    value_spec: ValueSpec, value: float, registers: list[int]
) -> None:
    assert encode_value(value_spec, value) == registers


@pytest.mark.parametrize(
    ("value_spec", "value"),
    [(spec("u32"), -1), (spec("u16"), 65536), (spec("s16"), 40000), (spec("float32"), 1e39)],
)
def test_encoding_a_value_that_does_not_fit_is_a_value_error(
    value_spec: ValueSpec, value: float
) -> None:
    with pytest.raises(ValueError, match="does not fit a"):
        encode_value(value_spec, value)


def samples(value_spec: ValueSpec) -> Sequence[float]:
    """A handful of values the spec's types can hold (hypothesis is not available)."""
    parts = value_spec.parts
    if all(part.type[0] in "us" and part.scale == 1.0 for part in parts):
        signed = all(part.type[0] == "s" for part in parts)
        return [0, 1, 42, 30000] + ([-17] if signed else [])
    if len(value_spec.parts) > 1:
        return [0.0, 1.5, 1234.56789, 99999.000001]
    return [0.0, 1.5, -17.25, 230.2, 12345.67]


@pytest.mark.parametrize("profile_id", sorted(load_profiles(PROFILES)))
def test_every_shipped_value_round_trips(profile_id: str) -> None:
    profile = load_profiles(PROFILES)[profile_id]
    for value_spec in profile.values:
        for value in samples(value_spec):
            registers = encode_value(value_spec, value)
            assert len(registers) == value_spec.count
            decoded = decode_value(value_spec, registers)
            assert decoded == pytest.approx(value, rel=1e-6, abs=1e-6), value_spec.name


# ---- blocks ------------------------------------------------------------------------


def test_decode_block_slices_each_value_out_of_one_read() -> None:
    profile = load_profile(PROFILES / "dynaflox-ultrad.toml")
    block = profile.blocks()[0]
    assert (block.function, block.address, block.count) == (3, 0, 12)
    registers = [0xFFFF, 0xFF38, 0, 1234, 8, 0xAA52, 0, 0, 0, 0, 0, 3600]
    assert decode_block(block, registers) == {
        "flow_lph": -200,
        "forward_m3": pytest.approx(1234.56789),
        "reverse_m3": 0,
        "run_time_s": 3600,
    }


def test_decode_block_refuses_a_short_read() -> None:
    block = Block(4, 0x10, 4, (spec("float32", address=0x10),))
    with pytest.raises(ValueError, match="block at 0x0010 spans 4 registers, got 2"):
        decode_block(block, [0, 0])
