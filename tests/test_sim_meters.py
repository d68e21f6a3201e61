"""gateway.sim.meters: the meter simulator of the demo, the tests and the benchmarks.

Every check goes through a real pymodbus client over TCP and decodes with the
gateway's own ``decode_block``, so what is tested is what the gateway sees.
Time is a ``SimClock``: hours pass in a line of code.
"""

from __future__ import annotations

import csv
import math
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from gateway.adapters.modbus.decode import decode_block
from gateway.cli import main as gateway_cli
from gateway.config import load_site_config
from gateway.meters.vee import Baseline, validate_counter
from gateway.profiles import Profile, load_profiles
from gateway.sim.meters import (
    REFERENCE_PROFILES,
    MeterFleet,
    SimClock,
    reference_slice,
    shipped_profiles_dir,
)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference-site"
TZ = ZoneInfo("Asia/Shanghai")
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    return load_profiles(ROOT / "config" / "profiles")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(datetime(2025, 3, 10, 8, 0, tzinfo=TZ))


@pytest.fixture
def fleet(profiles: dict[str, Profile], clock: SimClock) -> Iterator[MeterFleet]:
    fleet = MeterFleet(now=clock)
    fleet.add_meter("E", 1, profiles["chint-ddsu666"], building="B01", start_kwh=1234.5)
    fleet.add_meter("E", 2, profiles["chint-ddsu666"], building="B02")
    fleet.add_meter("W", 1, profiles["dynaflox-ultrad"], building="B01", start_m3=345.678)
    fleet.add_meter("M", 1, profiles["chint-dtsu666"], kind="main", building="B01")
    fleet.add_io_module("IO", 1, profiles["relay-8in8out"])
    with fleet:
        yield fleet


@contextmanager
def client(fleet: MeterFleet, link: str) -> Iterator[ModbusTcpClient]:
    c = ModbusTcpClient(HOST, port=fleet.port(link), timeout=0.3, retries=0)
    assert c.connect()
    try:
        yield c
    finally:
        c.close()


def read(c: ModbusTcpClient, profile: Profile, unit: int) -> dict[str, Any]:
    """Every value of ``profile`` as the gateway reads it: block by block, decoded."""
    values: dict[str, Any] = {}
    for block in profile.blocks():
        fetch = c.read_holding_registers if block.function == 3 else c.read_input_registers
        answer = fetch(block.address, count=block.count, device_id=unit)
        assert not answer.isError(), answer
        values.update(decode_block(block, answer.registers))
    return values


def test_household_meters_answer_plausible_values_that_move_with_time(
    fleet: MeterFleet, profiles: dict[str, Profile], clock: SimClock
) -> None:
    ddsu, dyna = profiles["chint-ddsu666"], profiles["dynaflox-ultrad"]
    with client(fleet, "E") as e, client(fleet, "W") as w:
        power = read(e, ddsu, 1)
        water = read(w, dyna, 1)
        assert 220 <= power["voltage"] <= 235
        assert 49.9 < power["frequency_hz"] < 50.1
        assert 0.85 < power["power_factor"] <= 1
        assert 0.02 < power["power_kw"] < 15
        expected_a = power["power_kw"] * 1000 / (power["voltage"] * power["power_factor"])
        assert power["current"] == pytest.approx(expected_a, rel=1e-3)
        assert power["power_kvar"] == pytest.approx(
            power["power_kw"] * math.tan(math.acos(power["power_factor"])), rel=1e-3
        )
        assert power["import_kwh"] == pytest.approx(1234.5, abs=0.01)
        assert power["export_kwh"] == 0
        assert water["forward_m3"] == pytest.approx(345.678, abs=1e-5)
        assert water["flow_lph"] >= 0 and water["error_code"] == 0
        assert 3000 < water["battery_mv"] < 3700 and water["run_time_s"] > 86_400

        # Ten-minute steps through the morning: energy strictly grows, water never falls.
        last_kwh, last_m3, last_run = power["import_kwh"], water["forward_m3"], water["run_time_s"]
        for _ in range(12):
            clock.advance(minutes=10)
            power, water = read(e, ddsu, 1), read(w, dyna, 1)
            assert power["import_kwh"] > last_kwh
            assert water["forward_m3"] >= last_m3
            assert water["run_time_s"] == last_run + 600
            last_kwh, last_m3, last_run = (
                power["import_kwh"],
                water["forward_m3"],
                water["run_time_s"],
            )

        clock.advance(hours=24)
        power, water = read(e, ddsu, 1), read(w, dyna, 1)
        assert 1 < power["import_kwh"] - last_kwh < 40  # a home: 0.3 kW on average
        assert 0.02 < water["forward_m3"] - last_m3 < 2  # a home: 0.36 m³ a day on average


def test_consumption_follows_a_household_day(profiles: dict[str, Profile]) -> None:
    clock = SimClock(datetime(2025, 3, 10, 3, 0, tzinfo=TZ))
    fleet = MeterFleet(now=clock)  # values() works on a fleet that is not serving
    for unit in range(1, 61):
        fleet.add_meter("E", unit, profiles["chint-ddsu666"])
        fleet.add_meter("W", unit, profiles["dynaflox-ultrad"])

    def mean_of(link: str, name: str) -> float:
        return statistics.fmean(fleet.values(link, unit)[name] for unit in range(1, 61))

    night_kw = mean_of("E", "power_kw")
    clock.set(datetime(2025, 3, 10, 8, 0, tzinfo=TZ))
    morning_kw = mean_of("E", "power_kw")
    clock.set(datetime(2025, 3, 10, 20, 0, tzinfo=TZ))
    evening_kw = mean_of("E", "power_kw")
    assert night_kw < 0.2 < 0.3 < morning_kw < evening_kw < 1.0

    kwh, m3 = mean_of("E", "import_kwh"), mean_of("W", "forward_m3")
    clock.set(datetime(2025, 3, 11, 20, 0, tzinfo=TZ))
    assert mean_of("E", "import_kwh") - kwh == pytest.approx(0.3 * 24, rel=0.2)
    assert mean_of("W", "forward_m3") - m3 == pytest.approx(0.015 * 24, rel=0.3)


def test_a_building_main_is_three_phase_and_carries_a_tower(
    fleet: MeterFleet, profiles: dict[str, Profile]
) -> None:
    with client(fleet, "M") as m:
        main = read(m, profiles["chint-dtsu666"], 1)
    assert 10_000 < main["power_w"] < 80_000  # 54 homes and the lifts at 08:00
    for phase in (1, 2, 3):
        volts = main[f"voltage_l{phase}"]
        assert 220 <= volts <= 235
        assert main[f"current_l{phase}"] == pytest.approx(
            main[f"power_w_l{phase}"] / (volts * main["power_factor"]), rel=2e-3
        )
    assert main["voltage_ab"] == pytest.approx(
        math.sqrt(3) * (main["voltage_l1"] + main["voltage_l2"]) / 2, rel=1e-3
    )
    assert main["power_w"] == pytest.approx(
        main["power_w_l1"] + main["power_w_l2"] + main["power_w_l3"], rel=1e-3
    )
    assert main["import_kwh"] > 10_000


def test_cut_power_darkens_a_building_and_freezes_its_counters(
    fleet: MeterFleet, profiles: dict[str, Profile], clock: SimClock
) -> None:
    ddsu, dtsu = profiles["chint-ddsu666"], profiles["chint-dtsu666"]
    with client(fleet, "E") as e, client(fleet, "M") as m:
        assert fleet.cut_power("B01") == 2  # the home and the building main
        dark, main = read(e, ddsu, 1), read(m, dtsu, 1)
        lit = read(e, ddsu, 2)
        assert dark["voltage"] == dark["current"] == dark["power_kw"] == 0
        assert main["voltage_l1"] == main["power_w"] == 0
        clock.advance(hours=3)
        assert read(e, ddsu, 1)["import_kwh"] == dark["import_kwh"]
        assert read(m, dtsu, 1)["import_kwh"] == main["import_kwh"]
        assert read(e, ddsu, 2)["import_kwh"] > lit["import_kwh"]  # B02 still has power

        assert fleet.restore_power("B01") == 2
        back = read(e, ddsu, 1)
        assert 220 <= back["voltage"] <= 235 and back["power_kw"] > 0
        assert back["import_kwh"] == dark["import_kwh"]  # nothing counted while dark
        clock.advance(hours=1)
        assert read(e, ddsu, 1)["import_kwh"] > dark["import_kwh"]
    with pytest.raises(KeyError):
        fleet.cut_power("B99")


def test_a_silenced_unit_times_out_and_exceptions_are_answered_until_healed(
    fleet: MeterFleet,
) -> None:
    with client(fleet, "E") as e:
        fleet.silence("E", 1)
        started = time.monotonic()
        with pytest.raises(ModbusIOException):
            e.read_input_registers(0x2000, count=8, device_id=1)
        assert 0.25 < time.monotonic() - started < 2
    with client(fleet, "E") as e:
        assert not e.read_input_registers(0x2000, count=8, device_id=2).isError()  # same bus

        fleet.answer_exceptions("E", 1, 2)
        answer = e.read_input_registers(0x2000, count=8, device_id=1)
        assert answer.isError() and answer.exception_code == 2
        fleet.answer_exceptions("E", 2, 4)
        assert e.read_input_registers(0x2000, count=8, device_id=2).exception_code == 4

        fleet.heal("E", 1)
        fleet.heal("E", 2)
        assert not e.read_input_registers(0x2000, count=8, device_id=1).isError()
        assert not e.read_input_registers(0x2000, count=8, device_id=2).isError()

        # As a real meter: unlisted registers, other functions, too long a read.
        assert e.read_input_registers(0x2008, count=2, device_id=1).exception_code == 2
        assert e.read_holding_registers(0x2000, count=2, device_id=1).exception_code == 1
        assert e.read_input_registers(0x2000, count=41, device_id=1).exception_code == 3
        assert e.write_register(0x2000, 1, device_id=1).exception_code == 1
    with pytest.raises(ValueError):
        fleet.answer_exceptions("E", 1, 99)


def test_roll_over_wraps_a_counter(
    fleet: MeterFleet, profiles: dict[str, Profile], clock: SimClock
) -> None:
    ddsu = profiles["chint-ddsu666"]
    wrapping = ddsu.with_overrides({"import_kwh": {"rollover_at": 100_000.0}}, "test")
    fleet.add_meter("E", 3, wrapping)  # added while the fleet runs
    with client(fleet, "E") as e:
        before = read(e, ddsu, 1)["import_kwh"]
        assert fleet.roll_over("E", 1, "import_kwh") == pytest.approx(0.01)
        assert read(e, ddsu, 1)["import_kwh"] < 0.02 < before
        clock.advance(hours=1)
        assert 0.02 < read(e, ddsu, 1)["import_kwh"] < 15

        near_top = fleet.roll_over("E", 3, "import_kwh")
        at = clock()
        assert 99_999 < near_top < 100_000
        assert read(e, wrapping, 3)["import_kwh"] == pytest.approx(near_top)
        clock.advance(hours=1)
        wrapped = read(e, wrapping, 3)["import_kwh"]
        assert 0 < wrapped < 15
        # … which the gateway's validation takes for a rollover, not a decrease.
        spec = wrapping.value("import_kwh")
        verdict = validate_counter(spec, Baseline(near_top, at), wrapped, clock())
        assert verdict.quality == "good" and verdict.flags == ("rollover",)
    with pytest.raises(ValueError):
        fleet.roll_over("E", 1, "voltage")
    with pytest.raises(KeyError):
        fleet.roll_over("E", 1, "no_such_value")


def test_swapped_words_decode_only_as_cdab(fleet: MeterFleet, profiles: dict[str, Profile]) -> None:
    ddsu = profiles["chint-ddsu666"]
    cdab = ddsu.with_overrides(
        {spec.name: {"word_order": "little"} for spec in ddsu.values}, "test"
    )
    with client(fleet, "E") as e:
        fleet.swap_words("E", 1)
        wrong, right = read(e, ddsu, 1), read(e, cdab, 1)
        assert 220 <= right["voltage"] <= 235 and right["import_kwh"] == pytest.approx(
            1234.5, abs=0.5
        )
        assert not 220 <= wrong["voltage"] <= 235
        assert wrong["import_kwh"] != pytest.approx(right["import_kwh"], rel=0.01)
        fleet.heal("E", 1)
        assert 220 <= read(e, ddsu, 1)["voltage"] <= 235


def test_io_module_inputs_and_coils(fleet: MeterFleet) -> None:
    with client(fleet, "IO") as io:
        assert io.read_discrete_inputs(0, count=8, device_id=1).bits[:8] == [False] * 8
        fleet.set_input("IO", 1, 3, True)
        assert io.read_discrete_inputs(0, count=8, device_id=1).bits[:8] == [
            False, False, True, False, False, False, False, False,
        ]  # fmt: skip
        assert fleet.inputs("IO", 1)[2] is True
        fleet.set_input("IO", 1, 3, False)
        assert not any(io.read_discrete_inputs(0, count=8, device_id=1).bits[:8])

        assert not io.write_coil(1, True, device_id=1).isError()
        assert fleet.coils("IO", 1) == [False, True] + [False] * 6
        assert not io.write_coils(4, [True, True], device_id=1).isError()
        assert fleet.coils("IO", 1) == [False, True, False, False, True, True, False, False]
        assert io.read_coils(0, count=8, device_id=1).bits[:8] == fleet.coils("IO", 1)
        assert io.read_discrete_inputs(8, count=1, device_id=1).exception_code == 2
    with pytest.raises(ValueError):
        fleet.set_input("IO", 1, 9, True)
    with pytest.raises(TypeError):
        fleet.set_input("E", 1, 1, True)


def test_commands_are_safe_from_many_threads(fleet: MeterFleet, clock: SimClock) -> None:
    errors: list[BaseException] = []

    def hammer(unit: int) -> None:
        try:
            for _ in range(50):
                fleet.swap_words("E", unit)
                fleet.heal("E", unit)
                fleet.values("E", unit)
                fleet.set_input("IO", 1, unit, True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(unit,)) for unit in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert fleet.inputs("IO", 1)[:2] == [True, True]


def test_an_eager_tick_can_be_turned_on(profiles: dict[str, Profile]) -> None:
    fleet = MeterFleet(tick_s=0.05)
    for unit in range(1, 11):
        fleet.add_meter("E", unit, profiles["chint-ddsu666"])
    with fleet:
        deadline = time.monotonic() + 5
        while fleet.last_tick_cpu_s == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fleet.last_tick_cpu_s > 0
        assert fleet.refresh_all() > 0


def test_stop_closes_every_port(profiles: dict[str, Profile]) -> None:
    fleet = MeterFleet()
    fleet.add_meter("A", 1, profiles["chint-ddsu666"])
    fleet.add_meter("B", 1, profiles["dynaflox-ultrad"])
    with fleet:
        ports = fleet.ports()
        assert len(set(ports.values())) == 2
    for port in ports.values():
        with pytest.raises(OSError), socket.create_connection((HOST, port), timeout=0.5):
            pass
    with pytest.raises(RuntimeError):
        fleet.port("A")


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference-site is not here")
def test_reference_slice_is_the_reference_site() -> None:
    layout = reference_slice(3)
    towers = {"B01", "B02", "B03"}
    with (REFERENCE / "meters.csv").open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["building_id"] in towers | {"SITE"}]
    expected = {
        r["meter_id"]: (
            r["bus_id"],
            int(r["unit_id"]),
            REFERENCE_PROFILES[r["model"]],
            r["utility"],
            r["role"],
            float(r["poll_s"]),
            r["home_id"] or None,
        )
        for r in rows
    }
    got = {
        m.id: (m.link, m.unit, m.profile, m.utility, m.role, m.poll_s, m.home)
        for m in layout.meters
    }
    assert got == expected
    assert len(layout.meters) == 3 * 109 + 2

    with (REFERENCE / "io_points.csv").open(encoding="utf-8") as f:
        points = {(r["meaning"], r["where"], r["contact"].split("=")[0]) for r in csv.DictReader(f)}
    (module,) = layout.io_modules
    wired = {(c.meaning, c.where, c.abnormal) for c in module.inputs}
    assert wired <= points
    assert {c.meaning for c in module.inputs} >= {
        "fire_panel_alarm",
        "fire_panel_fault",
        "elevator_alarm",
        "sump_high",
    }


def test_reference_slice_site_file_passes_and_the_fleet_serves_every_device(
    tmp_path: Path, profiles: dict[str, Profile], capsys: pytest.CaptureFixture[str]
) -> None:
    layout = reference_slice(2)
    with MeterFleet.for_layout(layout, profiles) as fleet:
        site = tmp_path / "site.toml"
        site.write_text(
            layout.site_toml(fleet.ports(), profiles_dir=shipped_profiles_dir()), "utf-8"
        )
        config = load_site_config(site)
        assert gateway_cli(["check-config", str(site)]) == 0
        assert "8 links, 220 meters, 1 I/O modules" in capsys.readouterr().out
        assert {link.id for link in config.links} == set(layout.links)

        ports = {link.id: link.port for link in config.links if link.type == "modbus_tcp"}
        clients = {
            link: ModbusTcpClient(HOST, port=port, timeout=1, retries=0)
            for link, port in ports.items()
        }
        try:
            for meter in config.devices.meters:
                values = read(clients[meter.link], profiles[meter.profile], meter.unit_id)
                counter = next(s.name for s in profiles[meter.profile].values if s.counter)
                assert values[counter] > 0, meter.id
            for module in config.devices.io_modules:
                bits = clients[module.link].read_discrete_inputs(
                    0, count=8, device_id=module.unit_id
                )
                assert not bits.isError()
                assert [c.meaning for c in module.inputs][:2] == [
                    "fire_panel_alarm",
                    "fire_panel_fault",
                ]
        finally:
            for c in clients.values():
                c.close()
        reads = sum(len(profiles[m.profile].blocks()) for m in config.devices.meters)
        assert fleet.requests() == reads + len(config.devices.io_modules)
