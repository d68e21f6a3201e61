"""Device profiles: the shipped files, the read plan, site overrides, every error line.

A wrong register map gives plausible wrong numbers and no error, so each
load-time mistake must give exactly the expected line (file, key path, value,
reason), and the shipped profiles are read back through a real pymodbus server.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.adapters.modbus.decode import decode_block, encode_value
from gateway.errors import ConfigError
from gateway.profiles import Block, IoLayout, Profile, ValueSpec, load_profile, load_profiles
from tests.harness.modbus import ModbusTcpServer

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"
SHIPPED = {
    "chint-ddsu666",
    "chint-dtsu666",
    "dynaflox-ultrad",
    "eastron-sdm120",
    "eastron-sdm630",
    "relay-8in8out",
    "tuf-2000m",
}
HEADER = """\
[profile]
name = "Test meter"
kind = "meter"
utility = "electricity"
max_registers = 8
function = 4
word_order = "big"
"""
SITE = "config/site.toml: devices.meters[2].overrides"


# ---- helpers -------------------------------------------------------------------------


def value(name: str, address: int, type_: str = "float32", extra: str = "") -> str:
    """One [[values]] table."""
    return f'[[values]]\nname = "{name}"\naddress = {address}\ntype = "{type_}"\n{extra}\n'


def write(tmp_path: Path, text: str, name: str = "x") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def meter(tmp_path: Path, values: str, header: str = HEADER) -> Profile:
    return load_profile(write(tmp_path, header + values))


def problems_of(path: Path) -> list[str]:
    """The problem lines for ``path``, with its folder left out ("x.toml: …")."""
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    return [line.replace(f"{path.parent}/", "") for line in info.value.problems]


def the_problem(tmp_path: Path, text: str) -> str:
    """The one problem a profile text has (written to <tmp>/x.toml)."""
    found = problems_of(write(tmp_path, text))
    assert len(found) == 1, found
    return found[0]


def override_problems(profile: Profile, overrides: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        profile.with_overrides(overrides, SITE)
    return info.value.problems


def plan(profile: Profile) -> list[tuple[int, int, int]]:
    return [(block.function, block.address, block.count) for block in profile.blocks()]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Profile]:
    return load_profiles(PROFILES)


# ---- the shipped profiles ---------------------------------------------------------------


@pytest.mark.parametrize("profile_id", sorted(SHIPPED))
def test_every_shipped_profile_loads(profile_id: str) -> None:
    profile = load_profile(PROFILES / f"{profile_id}.toml")
    assert profile.id == profile_id
    assert profile.source == PROFILES / f"{profile_id}.toml"


def test_load_profiles_finds_all_seven(shipped: dict[str, Profile]) -> None:
    assert set(shipped) == SHIPPED


def test_every_shipped_counter_has_a_plausible_rate(shipped: dict[str, Profile]) -> None:
    counters = [spec for profile in shipped.values() for spec in profile.values if spec.counter]
    assert len(counters) == 12
    assert all(spec.max_rate_per_h for spec in counters)
    assert shipped["chint-ddsu666"].value("import_kwh").max_rate_per_h == 15.0
    assert shipped["dynaflox-ultrad"].value("forward_m3").max_rate_per_h == 3.0


def test_every_shipped_value_is_labelled_in_both_languages(shipped: dict[str, Profile]) -> None:
    for profile in shipped.values():
        for spec in profile.values:
            assert spec.label_zh and spec.label_en, f"{profile.id}: {spec.name}"


def test_shipped_meters_use_the_central_api_names(shipped: dict[str, Profile]) -> None:
    names = {profile_id: {spec.name for spec in p.values} for profile_id, p in shipped.items()}
    sdm120 = {"import_kwh", "export_kwh", "total_kwh", "voltage", "current", "power_w"}
    assert sdm120 | {"frequency_hz", "power_factor"} <= names["eastron-sdm120"]
    assert {"import_kwh", "power_kw"} <= names["chint-ddsu666"]
    assert {"flow_lph", "forward_m3", "reverse_m3"} <= names["dynaflox-ultrad"]
    assert names["tuf-2000m"] == {"flow_m3h", "net_m3"}


def test_ddsu666_power_is_in_kilowatts(shipped: dict[str, Profile]) -> None:
    power = shipped["chint-ddsu666"].value("power_kw")
    assert (power.address, power.unit, power.function) == (0x2004, "kW", 4)


def test_dtsu666_reads_holding_registers_with_scaled_floats(shipped: dict[str, Profile]) -> None:
    dtsu = shipped["chint-dtsu666"]
    assert {spec.function for spec in dtsu.values} == {3}
    scales = {name: dtsu.value(name).parts[0].scale for name in ("voltage_l1", "current_l1")}
    assert scales == {"voltage_l1": 0.1, "current_l1": 0.001}
    assert dtsu.value("power_factor").parts[0].scale == 0.001
    assert dtsu.value("frequency_hz").parts[0].scale == 0.01
    assert dtsu.value("import_kwh").address == 0x4000


def test_tuf_2000m_is_cdab_and_dynaflox_totals_are_composite(shipped: dict[str, Profile]) -> None:
    tuf = shipped["tuf-2000m"].values
    assert [(spec.address, spec.parts[0].word_order) for spec in tuf] == [
        (0, "little"),
        (112, "little"),
    ]
    forward = shipped["dynaflox-ultrad"].value("forward_m3")
    assert [(p.address, p.type, p.scale) for p in forward.parts] == [
        (2, "u32", 1.0),
        (4, "u32", 0.000001),
    ]


def test_relay_board_is_an_io_module(shipped: dict[str, Profile]) -> None:
    relay = shipped["relay-8in8out"]
    assert (relay.kind, relay.utility, relay.values, relay.blocks()) == ("io_module", None, (), ())
    assert relay.io == IoLayout(
        discrete_inputs_address=0, discrete_inputs=8, coils_address=0, coils=8
    )


def test_value_lookup_names_the_profile(shipped: dict[str, Profile]) -> None:
    assert shipped["eastron-sdm120"].value("voltage").address == 0
    with pytest.raises(KeyError, match=r'profile "eastron-sdm120" \(.*\) has no value "volts"'):
        shipped["eastron-sdm120"].value("volts")


# ---- the read plan ---------------------------------------------------------------------


def test_sdm630_plan_reads_contiguous_values_together(shipped: dict[str, Profile]) -> None:
    assert plan(shipped["eastron-sdm630"]) == [
        (4, 0x0000, 36),
        (4, 0x0034, 2),
        (4, 0x003E, 2),
        (4, 0x0046, 6),
        (4, 0x0156, 2),
    ]


def test_sdm630_with_any_gap_allowed_still_reads_at_most_60(shipped: dict[str, Profile]) -> None:
    sdm630 = replace(shipped["eastron-sdm630"], max_gap=1000)
    blocks = sdm630.blocks()
    assert plan(sdm630) == [(4, 0x0000, 54), (4, 0x003E, 14), (4, 0x0156, 2)]
    assert all(block.count <= 60 for block in blocks)
    assert_covers(sdm630, blocks)


def assert_covers(profile: Profile, blocks: tuple[Block, ...]) -> None:
    """Every value is in exactly one block, whole, with the block's function."""
    placed = [spec for block in blocks for spec in block.values]
    assert sorted(s.name for s in placed) == sorted(s.name for s in profile.values)
    for block in blocks:
        for spec in block.values:
            assert spec.function == block.function
            assert block.address <= spec.address and spec.end <= block.address + block.count


def test_a_gap_larger_than_max_gap_splits_the_read(tmp_path: Path) -> None:
    values = value("a", 0) + value("b", 4) + value("c", 6)
    header = HEADER.replace("max_registers = 8", "max_registers = 8\nmax_gap = 1")
    assert plan(meter(tmp_path, values, header)) == [(4, 0, 2), (4, 4, 4)]
    header = HEADER.replace("max_registers = 8", "max_registers = 8\nmax_gap = 2")
    assert plan(meter(tmp_path, values, header)) == [(4, 0, 8)]


def test_functions_never_share_a_read(tmp_path: Path) -> None:
    values = value("a", 0) + value("b", 2, extra="function = 3") + value("c", 4)
    profile = meter(tmp_path, values)
    assert plan(profile) == [(3, 2, 2), (4, 0, 2), (4, 4, 2)]
    assert_covers(profile, profile.blocks())


def test_a_value_is_never_split_across_reads(tmp_path: Path) -> None:
    profile = meter(tmp_path, value("a", 0) + value("b", 2) + value("c", 4) + value("d", 6, "u64"))
    assert plan(profile) == [(4, 0, 6), (4, 6, 4)]
    assert_covers(profile, profile.blocks())


def test_values_are_planned_in_address_order_whatever_the_file_order(tmp_path: Path) -> None:
    profile = meter(tmp_path, value("b", 2) + value("a", 0))
    (block,) = profile.blocks()
    assert [spec.name for spec in block.values] == ["a", "b"]


def test_a_composite_value_spans_its_parts(tmp_path: Path) -> None:
    parts = (
        '[[values]]\nname = "total"\ncounter = true\n'
        '[[values.parts]]\naddress = 2\ntype = "u16"\n'
        '[[values.parts]]\naddress = 5\ntype = "u16"\nscale = 0.001\n'
    )
    profile = meter(tmp_path, parts + value("after", 6))
    total = profile.value("total")
    assert (total.address, total.end, total.count) == (2, 6, 4)
    assert plan(profile) == [(4, 2, 6)]


# ---- site overrides ---------------------------------------------------------------------


def test_dtsu666_energy_override_moves_the_energy_read(shipped: dict[str, Profile]) -> None:
    dtsu = shipped["chint-dtsu666"]
    moved = dtsu.with_overrides({"import_kwh": {"address": 0x401E}}, SITE)
    assert moved.value("import_kwh").address == 0x401E
    assert plan(dtsu)[-1] == (3, 0x4000, 2)
    assert plan(moved)[-1] == (3, 0x401E, 2)
    assert plan(moved)[:-1] == plan(dtsu)[:-1]
    assert dtsu.value("import_kwh").address == 0x4000  # the shared profile is unchanged


def test_overrides_replace_only_the_fields_given(shipped: dict[str, Profile]) -> None:
    fields = {"function": 4, "word_order": "little", "unit": "Wh", "max_rate_per_h": 900.0}
    spec = shipped["chint-dtsu666"].with_overrides({"import_kwh": fields}, SITE).value("import_kwh")
    assert (spec.function, spec.unit, spec.max_rate_per_h) == (4, "Wh", 900.0)
    assert spec.parts[0].word_order == "little"
    assert (spec.address, spec.parts[0].type, spec.counter) == (0x4000, "float32", True)


def test_no_overrides_gives_the_same_profile(shipped: dict[str, Profile]) -> None:
    assert shipped["chint-dtsu666"].with_overrides({}, SITE) is shipped["chint-dtsu666"]


def test_overriding_a_composite_address_moves_all_parts(shipped: dict[str, Profile]) -> None:
    dynaflox = shipped["dynaflox-ultrad"]
    moved = dynaflox.with_overrides({"reverse_m3": {"address": 20, "word_order": "little"}}, SITE)
    parts = moved.value("reverse_m3").parts
    assert [(p.address, p.word_order) for p in parts] == [(20, "little"), (22, "little")]


def test_unknown_value_in_overrides(shipped: dict[str, Profile]) -> None:
    assert override_problems(shipped["tuf-2000m"], {"net_total": {"address": 0}}) == [
        f'{SITE}: "net_total" is not a value of profile "tuf-2000m" (flow_m3h, net_m3)'
    ]


def test_unknown_key_in_overrides(shipped: dict[str, Profile]) -> None:
    assert override_problems(shipped["chint-dtsu666"], {"import_kwh": {"adress": 0x401E}}) == [
        f"{SITE}.import_kwh.adress: unknown key (allowed: address, type, function, scale, "
        "word_order, byte_order, unit, rollover_at, max_rate_per_h)"
    ]


def test_bad_values_in_overrides(shipped: dict[str, Profile]) -> None:
    fields = {"type": "float16", "function": 6, "address": -1}
    assert override_problems(shipped["chint-dtsu666"], {"import_kwh": fields}) == [
        f"{SITE}.import_kwh.address: -1 is not a register address (0–65535)",
        f'{SITE}.import_kwh.type: "float16" is not a value type '
        "(u16, s16, u32, s32, u64, s64, float32, float64)",
        f"{SITE}.import_kwh.function: 6 is not a register function "
        "(3 = holding, 4 = input registers)",
    ]


def test_override_that_is_not_a_table(shipped: dict[str, Profile]) -> None:
    assert override_problems(shipped["chint-dtsu666"], {"import_kwh": 0x401E}) == [
        f"{SITE}.import_kwh: 16414 must be a table, e.g. {{ address = 0 }}"
    ]


def test_override_that_makes_values_overlap(shipped: dict[str, Profile]) -> None:
    assert override_problems(shipped["chint-dtsu666"], {"import_kwh": {"address": 0x2001}}) == [
        f'{SITE}.import_kwh: "import_kwh" (function 3, registers 0x2001–0x2002) '
        'overlaps "voltage_ab" (registers 0x2000–0x2001)',
        f'{SITE}.import_kwh: "import_kwh" (function 3, registers 0x2001–0x2002) '
        'overlaps "voltage_bc" (registers 0x2002–0x2003)',
    ]


def test_overlap_between_two_overridden_values_is_reported_once(
    shipped: dict[str, Profile],
) -> None:
    overrides = {"flow_m3h": {"address": 50}, "net_m3": {"address": 51}}
    assert override_problems(shipped["tuf-2000m"], overrides) == [
        f'{SITE}.net_m3: "net_m3" (function 3, registers 0x0033–0x0034) '
        'overlaps "flow_m3h" (registers 0x0032–0x0033)'
    ]


def test_moving_to_another_function_avoids_the_overlap(shipped: dict[str, Profile]) -> None:
    moved = shipped["chint-dtsu666"].with_overrides(
        {"import_kwh": {"address": 0x2000, "function": 4}}, SITE
    )
    assert plan(moved)[-1] == (4, 0x2000, 2)


def test_override_type_that_outgrows_max_registers(shipped: dict[str, Profile]) -> None:
    tuf = replace(shipped["tuf-2000m"], max_registers=2)
    assert override_problems(tuf, {"net_m3": {"type": "float64"}}) == [
        f'{SITE}.net_m3: "net_m3" spans 4 registers, more than profile.max_registers = 2 '
        "(a value is never split across reads)"
    ]


def test_type_and_scale_cannot_override_a_composite(shipped: dict[str, Profile]) -> None:
    fields = {"type": "u16", "scale": 2.0}
    assert override_problems(shipped["dynaflox-ultrad"], {"forward_m3": fields}) == [
        f'{SITE}.forward_m3.type: "u16" cannot apply to a value made of parts (which part?); '
        "copy the profile instead",
        f"{SITE}.forward_m3.scale: 2.0 cannot apply to a value made of parts (which part?); "
        "copy the profile instead",
    ]


def test_rate_override_on_a_non_counter(shipped: dict[str, Profile]) -> None:
    assert override_problems(shipped["tuf-2000m"], {"flow_m3h": {"rollover_at": 10.0}}) == [
        f'{SITE}.flow_m3h: "flow_m3h" has rollover_at or max_rate_per_h but is not a counter '
        "(set counter = true)"
    ]


# ---- load-time errors: one exact line each ------------------------------------------------


def test_malformed_toml(tmp_path: Path) -> None:
    assert the_problem(tmp_path, "[profile\n") == (
        "x.toml: not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 9)"
    )


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (
            'colour = "red"\n',
            "x.toml: values[0].colour: unknown key (see config/profiles/README.md)",
        ),
        (
            'word_order = "middle"\n',
            'x.toml: values[0].word_order: "middle" is not a word order '
            "(big = high word first (ABCD), little = CDAB)",
        ),
        (
            'byte_order = "swapped"\n',
            'x.toml: values[0].byte_order: "swapped" is not a byte order '
            "(big, little = bytes swapped in each register)",
        ),
        (
            "function = 16\n",
            "x.toml: values[0].function: 16 is not a register function "
            "(3 = holding, 4 = input registers)",
        ),
        (
            "counter = true\nrollover_at = 0.0\n",
            "x.toml: values[0].rollover_at: 0.0 must be a finite number greater than 0",
        ),
        (
            "counter = true\nrollover_at = -5\n",
            "x.toml: values[0].rollover_at: -5 must be a finite number greater than 0",
        ),
        (
            "counter = true\nmax_rate_per_h = nan\n",
            "x.toml: values[0].max_rate_per_h: nan must be a finite number greater than 0",
        ),
        ("scale = 0\n", "x.toml: values[0].scale: 0 is not a scale (a finite number other than 0)"),
        (
            'counter = "yes"\n',
            'x.toml: values[0].counter: "yes": input should be a valid boolean',
        ),
        (
            "max_rate_per_h = 15.0\n",
            'x.toml: values[0]: "v" has rollover_at or max_rate_per_h but is not a counter '
            "(set counter = true)",
        ),
    ],
)
def test_one_bad_value_field_gives_one_line(tmp_path: Path, extra: str, line: str) -> None:
    assert the_problem(tmp_path, HEADER + value("v", 0, extra=extra)) == line


def test_unknown_type(tmp_path: Path) -> None:
    assert the_problem(tmp_path, HEADER + value("v", 0) + value("w", 2, "float16")) == (
        'x.toml: values[1].type: "float16" is not a value type '
        "(u16, s16, u32, s32, u64, s64, float32, float64)"
    )


@pytest.mark.parametrize(
    ("address", "line"),
    [
        (70000, "x.toml: values[0].address: 70000 is not a register address (0–65535)"),
        (-1, "x.toml: values[0].address: -1 is not a register address (0–65535)"),
        ('"0x10"', 'x.toml: values[0].address: "0x10": input should be a valid integer'),
        (
            65535,
            'x.toml: values[0]: "v" (registers 0xFFFF–0x10000) runs past register 0xFFFF',
        ),
    ],
)
def test_address_out_of_range(tmp_path: Path, address: object, line: str) -> None:
    text = HEADER + f'[[values]]\nname = "v"\naddress = {address}\ntype = "u32"\n'
    assert the_problem(tmp_path, text) == line


def test_overlapping_values_name_both(tmp_path: Path) -> None:
    text = HEADER + value("voltage", 0) + value("current", 1)
    assert the_problem(tmp_path, text) == (
        'x.toml: values[1]: "current" (function 4, registers 0x0001–0x0002) '
        'overlaps "voltage" (registers 0x0000–0x0001)'
    )


def test_same_registers_under_different_functions_do_not_overlap(tmp_path: Path) -> None:
    profile = meter(tmp_path, value("a", 0) + value("b", 0, extra="function = 3"))
    assert len(profile.blocks()) == 2


def test_duplicate_value_names(tmp_path: Path) -> None:
    assert the_problem(tmp_path, HEADER + value("voltage", 0) + value("voltage", 2)) == (
        'x.toml: values[1].name: "voltage" is already used by values[0]'
    )


def test_bad_value_name(tmp_path: Path) -> None:
    assert the_problem(tmp_path, HEADER + value("import kWh", 0)) == (
        'x.toml: values[0].name: "import kWh" is not a value name '
        "(a letter, then letters, digits or '_'; at most 64)"
    )


def test_value_larger_than_max_registers(tmp_path: Path) -> None:
    header = HEADER.replace("max_registers = 8", "max_registers = 2")
    assert the_problem(tmp_path, header + value("energy", 0, "u64")) == (
        'x.toml: values[0]: "energy" spans 4 registers, more than profile.max_registers = 2 '
        "(a value is never split across reads)"
    )


def test_max_registers_beyond_the_modbus_limit(tmp_path: Path) -> None:
    header = HEADER.replace("max_registers = 8", "max_registers = 126")
    assert the_problem(tmp_path, header + value("v", 0)) == (
        "x.toml: profile.max_registers: 126 is not a register count for one read (1–125)"
    )


def test_composite_value_with_both_address_and_parts(tmp_path: Path) -> None:
    text = HEADER + value("total", 0, "u32") + "[[values.parts]]\naddress = 4\ntype = 'u16'\n"
    assert the_problem(tmp_path, text) == (
        "x.toml: values[0]: has both parts and address/type/scale (a value is either "
        "address + type or a list of [[values.parts]], each with its own scale)"
    )


def test_value_with_neither_address_nor_parts(tmp_path: Path) -> None:
    assert the_problem(tmp_path, HEADER + '[[values]]\nname = "v"\ntype = "u16"\n') == (
        "x.toml: values[0]: needs address and type, or [[values.parts]]"
    )


def test_overlapping_parts(tmp_path: Path) -> None:
    part = "[[values.parts]]\naddress = {}\ntype = '{}'\n"
    text = HEADER + '[[values]]\nname = "v"\n' + part.format(0, "u32") + part.format(1, "u16")
    assert the_problem(tmp_path, text) == ("x.toml: values[0]: parts overlap at register 0x0001")


def test_io_module_without_io(tmp_path: Path) -> None:
    text = '[profile]\nname = "Relays"\nkind = "io_module"\n'
    assert the_problem(tmp_path, text) == (
        "x.toml: io: required for an io_module: [io] with discrete_inputs and/or coils"
    )


def test_io_module_with_meter_keys(tmp_path: Path) -> None:
    text = (
        '[profile]\nname = "Relays"\nkind = "io_module"\nutility = "water"\n'
        "[io]\ncoils = { address = 0, count = 8 }\n" + value("v", 0)
    )
    assert problems_of(write(tmp_path, text)) == [
        "x.toml: profile.utility: only meter profiles have it (an io_module reads bits)",
        "x.toml: values: an io_module has no values (use [io])",
    ]


def test_io_module_with_empty_io(tmp_path: Path) -> None:
    text = '[profile]\nname = "Relays"\nkind = "io_module"\n[io]\n'
    assert the_problem(tmp_path, text) == "x.toml: io: needs discrete_inputs or coils (or both)"


def test_meter_without_values(tmp_path: Path) -> None:
    assert the_problem(tmp_path, HEADER) == "x.toml: values: a meter needs at least one [[values]]"


def test_meter_without_its_required_settings(tmp_path: Path) -> None:
    text = '[profile]\nname = "M"\nkind = "meter"\nutility = "water"\nmax_registers = 8\n'
    assert problems_of(write(tmp_path, text + value("v", 0))) == [
        "x.toml: profile.function: required key is missing for a meter "
        "(3 = holding or 4 = input registers, the default for every value)",
        "x.toml: profile.word_order: required key is missing for a meter "
        "(big = ABCD or little = CDAB; reading one as the other gives wrong numbers and no error)",
    ]


def test_unknown_kind_and_missing_name(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, '[profile]\nkind = "sensor"\n')) == [
        "x.toml: profile.name: required key is missing",
        'x.toml: profile.kind: "sensor" is not a profile kind (meter, io_module)',
    ]


def test_load_profiles_lists_all_problems_of_all_files(tmp_path: Path) -> None:
    write(tmp_path, HEADER + value("v", 0, "float16"), "a")
    write(tmp_path, HEADER + value("v", 0) + value("v", 2), "b")
    write(tmp_path, HEADER + value("v", 0), "good")
    (tmp_path / "notes.md").write_text("not a profile")
    with pytest.raises(ConfigError) as info:
        load_profiles(tmp_path)
    assert [line.split(": ", 1)[0] for line in info.value.problems] == [
        f"{tmp_path}/a.toml",
        f"{tmp_path}/b.toml",
    ]


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.toml") == ["nope.toml: no such file"]
    with pytest.raises(ConfigError, match="is not a directory"):
        load_profiles(tmp_path / "nope")


# ---- round trip through a real pymodbus server -------------------------------------------


def fit(profile: Profile, size: int) -> Profile:
    """``profile`` moved into a simulator of ``size`` registers, its read plan unchanged.

    The harness simulates registers 0..size-1 (a simulator of 0x4010 registers
    takes seconds to start), so each 256-register page in use moves to 0, 0x60,
    0xC0, … with offsets kept: DDSU666 0x2000/0x4000 → 0x00/0x60.
    """
    pages = sorted({spec.address & 0xFF00 for spec in profile.values})
    base = {page: 0x60 * rank for rank, page in enumerate(pages)}
    moves = {
        spec.name: {"address": base[spec.address & 0xFF00] + (spec.address & 0xFF)}
        for spec in profile.values
    }
    moved = profile.with_overrides(moves, "test")
    assert max(spec.end for spec in moved.values) <= size
    assert [(b.function, b.count) for b in moved.blocks()] == [
        (b.function, b.count) for b in profile.blocks()
    ]
    return moved


def sample(spec: ValueSpec, i: int) -> float | int:
    """A distinct value for each value of a profile, exact enough for float32."""
    if len(spec.parts) > 1:
        return 1234.56789 + i
    if spec.parts[0].type.startswith(("u", "s")) and spec.parts[0].scale == 1.0:
        return 1000 + i
    return 12.5 * (i + 1)


async def read_all(port: int, blocks: tuple[Block, ...]) -> dict[str, float | int]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    assert await client.connect()
    values: dict[str, float | int] = {}
    try:
        for block in blocks:
            read = client.read_input_registers
            if block.function == 3:
                read = client.read_holding_registers
            reply = await read(block.address, count=block.count, device_id=1)
            assert not reply.isError(), reply
            values.update(decode_block(block, reply.registers))
    finally:
        client.close()
    return values


@pytest.mark.parametrize("profile_id", sorted(SHIPPED - {"relay-8in8out"}))
def test_round_trip_through_a_real_modbus_server(
    modbus_server: ModbusTcpServer, shipped: dict[str, Profile], profile_id: str
) -> None:
    profile = fit(shipped[profile_id], modbus_server.size)
    expected = {spec.name: sample(spec, i) for i, spec in enumerate(profile.values)}
    for spec in profile.values:
        store = modbus_server.set_input_registers
        if spec.function == 3:
            store = modbus_server.set_holding_registers
        store(1, spec.address, encode_value(spec, expected[spec.name]))
    got = asyncio.run(read_all(modbus_server.port, profile.blocks()))
    assert got == pytest.approx(expected, rel=1e-6)
