"""The meter simulator: simulated meters and I/O modules on real Modbus TCP ports.

One ``MeterFleet`` serves the demo, the tests and the benchmarks. It runs one
pymodbus TCP server per simulated link (a port on 127.0.0.1 each, standing in
for an RS-485 bus behind a serial device server), all on ONE background thread
with its own asyncio loop, and any number of units per link:

* meters of the shipped profiles (``config/profiles``): each answers exactly
  the register blocks its profile lists (``Profile.blocks()``), encoded as the
  profile says (``encode_value``); other addresses get exception 2, other
  functions exception 1, a read longer than ``max_registers`` exception 3;
* I/O modules (relay-8in8out): discrete inputs a test or the demo opens and
  closes, coils a client switches.

Values move like real homes: a household's electricity follows a day (low at
night, a morning peak 7–9, an evening peak 18–22; 0.3 kW on average, each home
between 0.35 and 1.65 times that), water comes in bursts of a tap running
(0.015 m³/h on average); a building main carries its homes plus common loads,
smoother. Instantaneous values agree with each other (voltage 220–235 V
wandering slowly per building, current = P / (V × power factor), frequency
≈ 50 Hz) and with the counters, which integrate the same power or flow and
never decrease (export and reverse totals stay put: no solar, no backflow).

How registers are kept current — lazily, not on a tick: a unit's registers
are recomputed when a request reaches it and its values are older than
``refresh_s`` (1 s of simulated time) or a command changed it, so one poll's
blocks come from one snapshot. Measured on the 2-vCPU target, recomputing
every register of every meter costs ~21 µs a meter: 5 ms for the demo's 220
meters, 65 ms for the reference site's 3,054, i.e. 6.5 % of a CPU at a 1 s
tick, spent in the gateway's own process (the demo and benchmarks share its
GIL) whether or not anyone reads. Lazily an idle fleet costs nothing and the
cost follows the reads actually made (3,000 meters polled every 15 min: ~3 a
second): a served meter poll costs the fleet's thread ~190 µs of CPU, mostly
pymodbus' request handling (~53 µs a request). ``tick_s`` turns an eager tick
on anyway; ``refresh_all()`` times one.

Why not pymodbus' ``SimDevice``/``SimData`` datastore: it keeps one contiguous
list per function from the lowest to the highest address of a unit, padded
with invalid entries, so a DDSU666 (0x2000–0x400B) costs two 8,204-entry
lists: the 1,512 DDSU666 of the reference towers alone took 1.6 s and 196 MB. The
fleet's ``SimCore`` subclass (the server's ``context``, like the test
harness's) keeps a sparse dict per unit and function instead, and also gives
per-unit faults pymodbus lacks: ``silence`` raises ``NoSuchIdException``
with the server's ``ignore_missing_devices`` on, so that one unit does not
answer at all (nor does a unit id nobody simulates: a dead meter on a bus).

Time is injectable (``now=``, a callable returning an aware datetime;
``SimClock`` for tests), so a test can jump hours and see the counters move.
Commands (``cut_power``, ``silence``, ``roll_over``, ``set_input``, …) may be
called from any thread; they run on the fleet's loop.

``reference_slice()`` builds the layout of N towers of the reference site
(../shared/reference-site) and ``SiteLayout.site_toml()`` its site file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, cast
from zoneinfo import ZoneInfo

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator.simcore import SimCore

import gateway
from gateway.adapters.modbus.decode import encode_value
from gateway.errors import ConfigError
from gateway.profiles import Block, Profile, ValueSpec

log = logging.getLogger(__name__)

Now = Callable[[], datetime]
MeterKind = Literal["household", "main"]
_T = TypeVar("_T")

LOCALHOST = "127.0.0.1"
CALL_TIMEOUT_S = 10.0
SITE_ZONE = ZoneInfo("Asia/Shanghai")

HOME_KW = 0.3  # average electricity of one home
HOME_M3_PER_H = 0.015  # average water of one home
COMMON_KW_PER_HOME = 0.15  # lifts, corridor lights, pumps: on a building main
TAP_M3_PER_H = 0.42  # a tap or a shower running (7 L/min)
SLOT_S = 300  # consumption is steady within a 5-minute slot of a meter

# Function code -> the table it reads or writes (1 coils, 2 inputs, 3 holding, 4 input regs).
_TABLE = {1: 1, 5: 1, 15: 1, 2: 2, 3: 3, 6: 3, 16: 3, 22: 3, 23: 3, 4: 4}


# ---- time ----------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SimClock:
    """A settable time source for tests: pass it as ``now=``, then ``advance(hours=6)``."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("SimClock needs an aware datetime (with tzinfo)")
        self._now = start

    def __call__(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> datetime:
        """Move on by ``timedelta(**delta)``; returns the new time."""
        self._now += timedelta(**delta)
        return self._now

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("SimClock needs an aware datetime (with tzinfo)")
        self._now = when


# ---- deterministic randomness and the shape of a day ----------------------------------

_MASK64 = (1 << 64) - 1


def _mix(seed: int, n: int) -> float:
    """A uniform number in [0, 1) for (seed, n): splitmix64, stable across runs."""
    x = (seed * 0x9E3779B97F4A7C15 + n * 0xBF58476D1CE4E5B9 + 0x632BE59BD9B4E019) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((x ^ (x >> 31)) >> 11) / float(1 << 53)


def _seed(*parts: object) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def _normalised(hourly: Sequence[float]) -> tuple[float, ...]:
    mean = sum(hourly) / len(hourly)
    return tuple(v / mean for v in hourly)


# Relative use per hour of the day (00:00 … 23:00), normalised to a mean of 1.
_HOME_POWER = _normalised(
    (0.45, 0.38, 0.35, 0.33, 0.33, 0.38, 0.65, 1.25, 1.35, 0.95, 0.80, 0.85,
     0.95, 0.85, 0.75, 0.75, 0.85, 1.15, 1.65, 1.95, 2.05, 1.95, 1.55, 0.85)
)  # fmt: skip
_MAIN_POWER = tuple(0.35 + 0.65 * v for v in _HOME_POWER)  # common loads flatten the day
_HOME_WATER = _normalised(
    (0.15, 0.10, 0.08, 0.08, 0.10, 0.30, 1.40, 2.40, 1.90, 1.00, 0.80, 0.90,
     1.10, 0.90, 0.60, 0.60, 0.80, 1.20, 1.90, 2.20, 2.00, 1.60, 0.90, 0.40)
)  # fmt: skip


def _shape(table: Sequence[float], hour: float) -> float:
    """``table`` interpolated linearly at ``hour`` (0 ≤ hour < 24)."""
    i = int(hour)
    a = table[i % 24]
    return a + (table[(i + 1) % 24] - a) * (hour - i)


# ---- what a profile's value names mean -----------------------------------------------


@dataclass(frozen=True)
class _Model:
    """Per profile: the blocks to serve, and the same with float words swapped."""

    profile: Profile
    blocks: tuple[Block, ...]
    swapped: tuple[Block, ...]
    three_phase: bool
    electric: bool


def _swap_words(spec: ValueSpec) -> ValueSpec:
    flip = {"big": "little", "little": "big"}
    parts = tuple(
        replace(p, word_order=flip[p.word_order]) if p.count > 1 else p for p in spec.parts
    )
    return replace(spec, parts=parts)


def _model(profile: Profile) -> _Model:
    blocks = profile.blocks()
    swapped = tuple(replace(b, values=tuple(_swap_words(s) for s in b.values)) for b in blocks)
    names = {spec.name for spec in profile.values}
    return _Model(
        profile,
        blocks,
        swapped,
        three_phase=any(name.endswith(("_l2", "_l3")) for name in names),
        electric=profile.utility == "electricity",
    )


# ---- simulated units ---------------------------------------------------------------


class _Unit:
    """One unit id on a link: its tables and its faults."""

    kind = "unit"

    def __init__(self, link: str, unit: int, profile: Profile) -> None:
        self.link = link
        self.unit = unit
        self.profile = profile
        self.tables: dict[int, dict[int, Any]] = {}
        self.max_count = 2000
        self.silent = False
        self.exception: int | None = None
        self.swapped = False

    def before_read(self, ts: float, offset: float, refresh_s: float) -> None:
        """Bring the registers up to date before a request is answered."""

    def heal(self) -> None:
        self.silent = False
        self.exception = None
        self.swapped = False


class _IoModule(_Unit):
    kind = "io_module"

    def __init__(self, link: str, unit: int, profile: Profile) -> None:
        super().__init__(link, unit, profile)
        io = profile.io
        if io is None:
            raise ValueError(f'profile "{profile.id}" is not an I/O module profile')
        self.io = io
        if io.coils:
            self.tables[1] = {io.coils_address + i: False for i in range(io.coils)}
        if io.discrete_inputs:
            self.tables[2] = {
                io.discrete_inputs_address + i: False for i in range(io.discrete_inputs)
            }


class _Meter(_Unit):
    """A meter whose values follow a day; counters integrate lazily up to ``now``."""

    kind = "meter"

    def __init__(
        self,
        link: str,
        unit: int,
        profile: Profile,
        model: _Model,
        *,
        kind: MeterKind,
        building: str | None,
        home: str | None,
        homes: int,
        start: float | None,
        seed: int,
    ) -> None:
        super().__init__(link, unit, profile)
        self.model = model
        self.kind_of_meter = kind
        self.building = building
        self.home = home
        self.electric = model.electric
        self.household = kind == "household"
        self.seed = seed
        self.max_count = profile.max_registers
        for block in model.blocks:
            self.tables.setdefault(block.function, {})
        u = [_mix(seed, i) for i in range(12)]
        level = 0.35 + 1.3 * u[0]  # this home against the average one
        if self.electric:
            per_home = HOME_KW * level if self.household else (HOME_KW + COMMON_KW_PER_HOME)
            default_start = 800 + 14_000 * u[1] if self.household else homes * 3_000 * (0.5 + u[1])
        else:
            per_home = HOME_M3_PER_H * level if self.household else HOME_M3_PER_H
            default_start = 30 + 600 * u[1] if self.household else homes * 100 * (0.5 + u[1])
        self.mean = per_home * (1 if self.household else homes)  # kW or m³/h
        self.value = default_start if start is None else float(start)  # kWh or m³
        self.fixed = 0.0 if self.electric else round(0.5 * u[2], 3)  # export kWh / reverse m³
        self.tap = TAP_M3_PER_H * (0.7 + 0.6 * u[3])
        self.pf = (0.90 + 0.08 * u[4]) if self.household else (0.93 + 0.04 * u[4])
        b = _seed("building", building or link)
        self.v_base = 225.0 + 5.0 * _mix(b, 0) + (u[5] - 0.5)
        self.v_phase = 2 * math.pi * _mix(b, 1)
        phases = 3 if model.three_phase else 1
        self.dv = (0.0,) if phases == 1 else (0.0, 3.0 * (u[6] - 0.5), 3.0 * (u[7] - 0.5))
        raw = [1 + 0.12 * (u[8 + i] - 0.5) for i in range(phases)]
        self.weights = tuple(w / sum(raw) for w in raw)
        self.run_before = 86_400 * (10 + 400 * u[11])  # seconds run before the fleet saw it
        self.battery_mv = 3_400 + int(250 * u[10])
        self.powered = True
        self.offsets: dict[str, float] = {}
        self.t: float | None = None  # counters are integrated up to this time
        self.first_t: float | None = None
        self.refreshed_at = -math.inf
        self.dirty = True

    # ---- physics -----------------------------------------------------------------

    def rate(self, ts: float, offset: float) -> float:
        """Power (kW) or flow (m³/h) at ``ts``; ``offset``: the site's UTC offset in s."""
        if self.electric and not self.powered:
            return 0.0
        hour = ((ts + offset) % 86_400) / 3600
        u = _mix(self.seed, int(ts // SLOT_S))
        if self.electric:
            if self.household:
                return self.mean * _shape(_HOME_POWER, hour) * (0.55 + 0.9 * u)
            return self.mean * _shape(_MAIN_POWER, hour) * (0.9 + 0.2 * u)
        mean = self.mean * _shape(_HOME_WATER, hour)
        if self.household:  # a tap runs for the slot, or nothing flows
            return self.tap if u < mean / self.tap else 0.0
        return mean * (0.85 + 0.3 * u)

    def advance(self, ts: float, offset: float) -> None:
        """Integrate the counter from the last time up to ``ts`` (never backwards)."""
        if self.t is None:
            self.t = self.first_t = ts
            return
        t = self.t
        if ts <= t:
            return
        running = self.powered or not self.electric
        days = int((ts - t) // 86_400) - 1
        if days > 0:  # whole days at the average: a test may jump a month
            if running:
                self.value += self.mean * 24 * days
            t += days * 86_400
        while t < ts:
            end = min(ts, (t // SLOT_S + 1) * SLOT_S)
            self.value += self.rate((t + end) / 2, offset) * (end - t) / 3600
            t = end
        self.t = ts

    def quantities(self, ts: float, offset: float) -> dict[str, float]:
        """Every value this simulator knows by name, at ``ts`` (counters as integrated)."""
        rate = self.rate(ts, offset)
        if not self.electric:
            started = self.first_t if self.first_t is not None else ts
            return {
                "flow_lph": round(rate * 1000),
                "flow_m3h": rate,
                "forward_m3": self.value,
                "reverse_m3": self.fixed,
                "net_m3": self.value - self.fixed,
                "run_time_s": int(self.run_before + ts - started),
                "battery_mv": self.battery_mv,
                "error_code": 0,
            }
        q: dict[str, float] = {
            "import_kwh": self.value,
            "export_kwh": self.fixed,
            "total_kwh": self.value + self.fixed,
        }
        if not self.powered:
            return q  # everything else reads 0
        load = min(1.0, rate / (2.5 * self.mean)) if self.mean else 0.0
        wander = 2.5 * math.sin(2 * math.pi * ts / 2400 + self.v_phase)
        pf = self.pf
        tan = math.tan(math.acos(pf))
        total_w = 0.0
        for n, (dv, weight) in enumerate(zip(self.dv, self.weights, strict=True), start=1):
            volts = min(235.0, max(220.0, self.v_base + wander - 1.5 * load + dv))
            watts = rate * 1000 * weight
            total_w += watts
            q[f"voltage_l{n}"] = volts
            q[f"current_l{n}"] = watts / (volts * pf)
            q[f"power_w_l{n}"] = watts
            q[f"power_var_l{n}"] = watts * tan
            q[f"power_va_l{n}"] = watts / pf
            q[f"power_factor_l{n}"] = pf
        if len(self.dv) == 3:
            root3 = math.sqrt(3)
            q["voltage_ab"] = root3 * (q["voltage_l1"] + q["voltage_l2"]) / 2
            q["voltage_bc"] = root3 * (q["voltage_l2"] + q["voltage_l3"]) / 2
            q["voltage_ca"] = root3 * (q["voltage_l3"] + q["voltage_l1"]) / 2
        q["voltage"] = q["voltage_l1"]
        q["current"] = q["current_l1"]
        q["power_w"] = total_w
        q["power_kw"] = total_w / 1000
        q["power_var"] = total_w * tan
        q["power_kvar"] = total_w * tan / 1000
        q["power_va"] = total_w / pf
        q["power_factor"] = pf
        q["frequency_hz"] = (
            50 + 0.02 * math.sin(2 * math.pi * ts / 900) + 0.01 * math.sin(2 * math.pi * ts / 137)
        )
        return q

    def values(self, ts: float, offset: float) -> dict[str, float]:
        """The profile's values as the meter shows them (roll-overs applied)."""
        self.advance(ts, offset)
        q = self.quantities(ts, offset)
        values: dict[str, float] = {}
        for spec in self.profile.values:
            value = q.get(spec.name, 0.0)
            if spec.counter:
                value = max(0.0, value + self.offsets.get(spec.name, 0.0))
                if spec.rollover_at is not None:
                    value %= spec.rollover_at
            values[spec.name] = value
        return values

    def refresh(self, ts: float, offset: float) -> None:
        """Recompute every register of every block."""
        values = self.values(ts, offset)
        for block in self.model.swapped if self.swapped else self.model.blocks:
            registers = [0] * block.count
            for spec in block.values:
                at = spec.address - block.address
                registers[at : at + spec.count] = encode_value(spec, values[spec.name])
            self.tables[block.function].update(
                zip(range(block.address, block.address + block.count), registers, strict=True)
            )
        self.refreshed_at = ts
        self.dirty = False

    def before_read(self, ts: float, offset: float, refresh_s: float) -> None:
        if self.dirty or not 0 <= ts - self.refreshed_at < refresh_s:
            self.refresh(ts, offset)

    def heal(self) -> None:
        super().heal()
        self.dirty = True


# ---- the pymodbus side -----------------------------------------------------------------


class _LinkCore(SimCore):
    """The datastore of one link's server: sparse tables per unit, per-unit faults.

    pymodbus calls ``async_getValues``/``async_setValues`` for every request
    (on the fleet's loop). ``NoSuchIdException`` with the server's
    ``ignore_missing_devices`` means: send nothing at all.
    """

    def __init__(self, fleet: MeterFleet, link: str) -> None:
        super().__init__([])
        self.fleet = fleet
        self.link = link
        self.units: dict[int, _Unit] = {}
        self.requests = 0

    def _unit(self, device_id: int) -> _Unit:
        unit = self.units.get(device_id)
        if unit is None or unit.silent:
            raise NoSuchIdException(f"unit {device_id} on {self.link} does not answer")
        return unit

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.requests += 1
        unit = self._unit(device_id)
        if unit.exception is not None:
            return ExcCodes(unit.exception)
        table = unit.tables.get(_TABLE.get(func_code, 0))
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if count > unit.max_count:
            return ExcCodes.ILLEGAL_VALUE
        ts, offset = self.fleet._time()
        unit.before_read(ts, offset, self.fleet.refresh_s)
        try:
            return [table[a] for a in range(address, address + count)]
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        unit = self._unit(device_id)
        if unit.exception is not None:
            return ExcCodes(unit.exception)
        key = _TABLE.get(func_code, 0)
        table = unit.tables.get(key)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        span = range(address, address + len(values))
        if key != 1 or any(a not in table for a in span):
            return ExcCodes.ILLEGAL_ADDRESS  # only coils can be written
        table.update(zip(span, (bool(v) for v in values), strict=True))
        return None


@dataclass
class _Link:
    name: str
    port: int
    core: _LinkCore
    server: ModbusTcpServer | None = None


# ---- the fleet -------------------------------------------------------------------------


class MeterFleet:
    """Simulated meters and I/O modules, one Modbus TCP server per link.

    ``now``: the time source (an aware datetime; default the real UTC time);
    ``zone``: the site's time zone, for the shape of the day; ``refresh_s``:
    how old (simulated seconds) a unit's registers may be when read;
    ``tick_s``: also refresh every meter every ``tick_s`` real seconds (off by
    default, see the module docstring). Add links, meters and modules, then
    ``start()`` (or ``with``); ``port(link)`` is known once started.
    """

    def __init__(
        self,
        *,
        now: Now = _utc_now,
        zone: ZoneInfo = SITE_ZONE,
        host: str = LOCALHOST,
        refresh_s: float = 1.0,
        tick_s: float | None = None,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.zone = zone
        self.refresh_s = refresh_s
        self.tick_s = tick_s
        self.seed = seed
        self._now = now
        self._links: dict[str, _Link] = {}
        self._models: dict[int, _Model] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.started_in_s = 0.0
        self.last_tick_cpu_s = 0.0

    # ---- building ------------------------------------------------------------------

    def add_link(self, link: str, port: int = 0) -> None:
        """Declare a link (a server) on ``port`` (0: a free one). Done by add_meter too."""
        if link in self._links:
            if port and self._links[link].port not in (0, port):
                raise ValueError(f"link {link} already has port {self._links[link].port}")
            return
        if self._loop is not None:
            raise RuntimeError("links must be added before start()")
        self._links[link] = _Link(link, port, _LinkCore(self, link))

    def add_meter(
        self,
        link: str,
        unit: int,
        profile: Profile,
        *,
        kind: MeterKind = "household",
        building: str | None = None,
        home: str | None = None,
        homes: int = 54,
        start_kwh: float | None = None,
        start_m3: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Simulate a meter of ``profile`` at ``unit`` on ``link``.

        ``kind="main"``: a building or site main carrying ``homes`` homes.
        ``start_kwh`` (electricity) or ``start_m3`` (water): the counter's
        starting value (default: a plausible one per meter). ``building``
        groups meters for ``cut_power``.
        """
        if profile.kind != "meter":
            raise ValueError(f'profile "{profile.id}" is not a meter profile')
        electric = profile.utility == "electricity"
        if (start_kwh is not None and not electric) or (start_m3 is not None and electric):
            raise ValueError(f'profile "{profile.id}" is {profile.utility}: wrong start_ value')
        model = self._models.get(id(profile))
        if model is None:
            model = self._models[id(profile)] = _model(profile)
        meter = _Meter(
            link,
            unit,
            profile,
            model,
            kind=kind,
            building=building,
            home=home,
            homes=homes,
            start=start_kwh if electric else start_m3,
            seed=_seed(self.seed, link, unit) if seed is None else seed,
        )
        self._add(meter)

    def add_io_module(self, link: str, unit: int, profile: Profile) -> None:
        """Simulate an I/O module (discrete inputs and coils as ``profile.io`` says)."""
        self._add(_IoModule(link, unit, profile))

    def _add(self, unit: _Unit) -> None:
        if not 1 <= unit.unit <= 247:
            raise ValueError(f"unit id {unit.unit} is not 1–247")
        self.add_link(unit.link)
        core = self._links[unit.link].core

        def add() -> None:
            if unit.unit in core.units:
                raise ValueError(f"unit {unit.unit} on link {unit.link} is already simulated")
            core.units[unit.unit] = unit

        self._call(add)

    @classmethod
    def for_layout(cls, layout: SiteLayout, profiles: Mapping[str, Profile], **kwargs: Any) -> Self:
        """A fleet simulating every device of ``layout`` (not started)."""
        fleet = cls(**kwargs)
        for link in layout.links:
            fleet.add_link(link)
        for m in layout.meters:
            fleet.add_meter(
                m.link,
                m.unit,
                profiles[m.profile],
                kind=m.kind,
                building=m.building,
                home=m.home,
                homes=m.homes,
            )
        for io in layout.io_modules:
            fleet.add_io_module(io.link, io.unit, profiles[io.profile])
        return fleet

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the loop thread and every link's server; return once all accept."""
        if self._loop is not None:
            raise RuntimeError("fleet already started")
        started = time.perf_counter()
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="meter-fleet", daemon=True
        )
        self._thread.start()
        self._loop = loop
        try:
            self._call(self._async_start())
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.perf_counter() - started
        log.info(
            "meter fleet: %d units on %d links in %.2f s",
            self.units(),
            len(self._links),
            self.started_in_s,
        )

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _async_start(self) -> None:
        for link in self._links.values():
            server = ModbusTcpServer(
                [], address=(self.host, link.port), ignore_missing_devices=True
            )
            server.context = link.core
            await server.serve_forever(background=True)
            link.server = server
            listener = cast(asyncio.Server, server.transport)  # TCP: an asyncio server
            link.port = listener.sockets[0].getsockname()[1]
        if self.tick_s is not None:
            asyncio.get_running_loop().create_task(self._tick(self.tick_s), name="fleet-tick")

    async def _tick(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.last_tick_cpu_s = self._refresh_all()

    async def _async_stop(self) -> None:
        for link in self._links.values():
            if link.server is not None:
                await link.server.shutdown()  # type: ignore[no-untyped-call]
                link.server = None
        # Request tasks caught by the shutdown must end here, or closing the
        # loop warns "Task was destroyed but it is pending".
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close every server and client connection; stop and join the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._async_stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=CALL_TIMEOUT_S)
            self._loop = self._thread = None
        if thread.is_alive():
            raise RuntimeError("meter-fleet thread did not stop")

    def _call(self, work: Callable[[], _T] | Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` on the fleet's loop (or here, if not running) and return its result."""
        loop = self._loop
        if isinstance(work, Coroutine):
            if loop is None:
                work.close()
                raise RuntimeError("fleet is not running")
            return asyncio.run_coroutine_threadsafe(work, loop).result(timeout=CALL_TIMEOUT_S)
        if loop is None or threading.current_thread() is self._thread:
            return work()
        call = work

        async def run() -> _T:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=CALL_TIMEOUT_S)

    # ---- looking things up -----------------------------------------------------------

    def port(self, link: str) -> int:
        """The TCP port ``link`` listens on (after ``start()``)."""
        found = self._links.get(link)
        if found is None:
            raise KeyError(f"no simulated link {link!r}")
        if found.server is None:
            raise RuntimeError("fleet is not running: ports are known after start()")
        return found.port

    @property
    def links(self) -> list[str]:
        return list(self._links)

    def ports(self) -> dict[str, int]:
        return {link: self.port(link) for link in self._links}

    def units(self) -> int:
        return sum(len(link.core.units) for link in self._links.values())

    def requests(self) -> int:
        """Requests answered (or ignored) so far, all links together."""
        return sum(link.core.requests for link in self._links.values())

    def _get(self, link: str, unit: int) -> _Unit:
        found = self._links.get(link)
        if found is None or unit not in found.core.units:
            raise KeyError(f"no simulated unit {unit} on link {link!r}")
        return found.core.units[unit]

    def _meter(self, link: str, unit: int) -> _Meter:
        found = self._get(link, unit)
        if not isinstance(found, _Meter):
            raise TypeError(f"unit {unit} on link {link!r} is not a meter")
        return found

    def _io(self, link: str, unit: int) -> _IoModule:
        found = self._get(link, unit)
        if not isinstance(found, _IoModule):
            raise TypeError(f"unit {unit} on link {link!r} is not an I/O module")
        return found

    def _time(self) -> tuple[float, float]:
        """Now as (POSIX seconds, the site's UTC offset in seconds)."""
        now = self._now()
        if now.tzinfo is None:
            now = now.replace(tzinfo=self.zone)
        offset = now.astimezone(self.zone).utcoffset()
        return now.timestamp(), offset.total_seconds() if offset else 0.0

    def _meters(self) -> Iterator[_Meter]:
        for link in self._links.values():
            for unit in link.core.units.values():
                if isinstance(unit, _Meter):
                    yield unit

    # ---- reading the truth -----------------------------------------------------------

    def values(self, link: str, unit: int) -> dict[str, float]:
        """The meter's values now, as it would serve them (before word swapping)."""
        meter = self._meter(link, unit)
        return self._call(lambda: meter.values(*self._time()))

    def refresh_all(self) -> float:
        """Recompute every meter's registers now; returns the CPU seconds it took."""
        return self._call(self._refresh_all)

    def _refresh_all(self) -> float:
        cpu = time.thread_time()
        ts, offset = self._time()
        for meter in self._meters():
            meter.refresh(ts, offset)
        return time.thread_time() - cpu

    # ---- commands (any thread) ------------------------------------------------------

    def cut_power(self, building: str) -> int:
        """Power cut in ``building``: its electricity meters read 0 V, 0 A, 0 kW and
        their counters stop (they keep answering). Water meters run on batteries.
        Returns how many meters went dark; KeyError if the building has none."""
        return self._power(building, on=False)

    def restore_power(self, building: str) -> int:
        """Power back in ``building``: its meters measure and count again."""
        return self._power(building, on=True)

    def _power(self, building: str, *, on: bool) -> int:
        def change() -> int:
            ts, offset = self._time()
            changed = 0
            for meter in self._meters():
                if meter.building == building and meter.electric:
                    meter.advance(ts, offset)  # count up to the cut at the old state
                    meter.powered = on
                    meter.dirty = True
                    changed += 1
            return changed

        changed = self._call(change)
        if not changed:
            raise KeyError(f"no simulated electricity meter in building {building!r}")
        return changed

    def silence(self, link: str, unit: int) -> None:
        """The unit stops answering at all (a dead meter, a cut bus wire) until ``heal``."""
        found = self._get(link, unit)

        def change() -> None:
            found.silent, found.exception = True, None

        self._call(change)

    def answer_exceptions(self, link: str, unit: int, code: int) -> None:
        """The unit answers every request with Modbus exception ``code`` (e.g. 2, 4)
        until ``heal`` (instead of staying silent, if it was)."""
        ExcCodes(code)  # ValueError for a code Modbus does not have
        found = self._get(link, unit)

        def change() -> None:
            found.silent, found.exception = False, code

        self._call(change)

    def swap_words(self, link: str, unit: int, swapped: bool = True) -> None:
        """Serve multi-register values with the words the other way round
        (float32 CDAB instead of ABCD): the classic misconfigured meter."""
        found = self._meter(link, unit)

        def change() -> None:
            found.swapped = swapped
            found.dirty = True

        self._call(change)

    def heal(self, link: str, unit: int) -> None:
        """Undo ``silence``, ``answer_exceptions`` and ``swap_words``."""
        found = self._get(link, unit)
        self._call(found.heal)

    def roll_over(
        self, link: str, unit: int, register_name: str, *, margin: float | None = None
    ) -> float:
        """Make a counter wrap; returns its value right after.

        With ``rollover_at`` in the profile the counter jumps to ``margin``
        below it (default: about six minutes of the meter's average use) and
        wraps to near zero by itself as it counts on. Without, it wraps to
        ``margin`` (default 0.01) at once, like a register that overflowed.
        """
        meter = self._meter(link, unit)
        spec = meter.profile.value(register_name)
        if not spec.counter:
            raise ValueError(f'"{register_name}" of {meter.profile.id} is not a counter')

        def change() -> float:
            ts, offset = self._time()
            meter.offsets.pop(register_name, None)
            raw = meter.values(ts, offset)[register_name]
            if spec.rollover_at is not None:
                below = margin if margin is not None else max(0.1 * meter.mean, 0.001)
                target = spec.rollover_at - below
            else:
                target = 0.01 if margin is None else margin
            meter.offsets[register_name] = target - raw
            meter.dirty = True
            return meter.values(ts, offset)[register_name]

        return self._call(change)

    def set_input(self, link: str, unit: int, number: int, closed: bool) -> None:
        """Close or open input ``number`` (1 = the first, as on the board's label)."""
        module = self._io(link, unit)
        io = module.io
        if not 1 <= number <= io.discrete_inputs:
            raise ValueError(f"{module.profile.id} has inputs 1–{io.discrete_inputs}, not {number}")
        address = io.discrete_inputs_address + number - 1

        def change() -> None:
            module.tables[2][address] = bool(closed)

        self._call(change)

    def inputs(self, link: str, unit: int) -> list[bool]:
        """The module's inputs, input 1 first."""
        module = self._io(link, unit)
        io = module.io
        return self._call(
            lambda: [
                bool(module.tables[2][io.discrete_inputs_address + i])
                for i in range(io.discrete_inputs)
            ]
        )

    def coils(self, link: str, unit: int) -> list[bool]:
        """The module's relay outputs as clients left them, output 1 first."""
        module = self._io(link, unit)
        io = module.io
        return self._call(
            lambda: [bool(module.tables[1][io.coils_address + i]) for i in range(io.coils)]
        )


# ---- the reference site ------------------------------------------------------------------

# meters.csv model -> shipped profile id
REFERENCE_PROFILES = {
    "DDSU666": "chint-ddsu666",
    "DYNAFLOX": "dynaflox-ultrad",
    "DTSU666": "chint-dtsu666",
    "SDM630": "eastron-sdm630",
    "TUF2000M": "tuf-2000m",
}
TOWERS = 28
TOWER_FLOORS = 18
TOWER_HOMES_PER_FLOOR = 3


@dataclass(frozen=True)
class SimMeter:
    """One meter of a layout: its site-file entry and how the fleet simulates it."""

    id: str
    link: str
    unit: int
    profile: str
    utility: str
    role: Literal["billed", "main"]
    poll_s: float
    building: str | None = None
    home: str | None = None
    kind: MeterKind = "household"
    homes: int = 1


@dataclass(frozen=True)
class SimInput:
    number: int
    meaning: str
    where: str
    name: str
    abnormal: Literal["closed", "open"] = "closed"


@dataclass(frozen=True)
class SimOutput:
    number: int
    name: str
    meaning: str | None = None


@dataclass(frozen=True)
class SimIoModule:
    id: str
    link: str
    unit: int
    profile: str
    inputs: tuple[SimInput, ...]
    outputs: tuple[SimOutput, ...] = ()
    poll_s: float = 0.25


@dataclass(frozen=True)
class SiteLayout:
    """A simulated site: links, meters, I/O modules; ``site_toml()`` writes its site file."""

    site_id: str
    name: str
    name_en: str
    links: tuple[str, ...]
    meters: tuple[SimMeter, ...]
    io_modules: tuple[SimIoModule, ...]
    timezone: str = "Asia/Shanghai"

    def find_input(self, meaning: str, where: str | None = None) -> tuple[SimIoModule, SimInput]:
        """The module and input wired to ``meaning`` (at ``where``)."""
        for module in self.io_modules:
            for contact in module.inputs:
                if contact.meaning == meaning and where in (None, contact.where):
                    return module, contact
        raise KeyError(f"no input {meaning!r} at {where!r}")

    def site_toml(
        self,
        ports: Mapping[str, int],
        *,
        profiles_dir: Path,
        host: str = LOCALHOST,
        journal: str = "journal.db",
        extra: str = "",
    ) -> str:
        """The site file for this layout served at ``host:ports[link]``.

        ``extra`` is TOML inserted after ``[journal]`` (``[api]``,
        ``[service]``, ``[[users]]`` …); it must not repeat ``[site]`` or
        ``[journal]``. Links are ``modbus_tcp``: the fleet speaks Modbus TCP.
        """

        def q(value: object) -> str:
            return json.dumps(str(value), ensure_ascii=False)

        out = [
            "# Generated by gateway.sim.meters (SiteLayout.site_toml): the simulated site.",
            "",
            "[site]",
            f"id = {q(self.site_id)}",
            f"name = {q(self.name)}",
            f"name_en = {q(self.name_en)}",
            f"timezone = {q(self.timezone)}",
            f"profiles_dir = {q(profiles_dir)}",
            "",
            "[journal]",
            f"path = {q(journal)}",
        ]
        if extra.strip():
            out += ["", extra.strip()]
        for link in self.links:
            out += [
                "",
                "[[links]]",
                f"id = {q(link)}",
                'type = "modbus_tcp"',
                f"host = {q(host)}",
                f"port = {int(ports[link])}",
            ]
        for m in self.meters:
            out += [
                "",
                "[[devices.meters]]",
                f"id = {q(m.id)}",
                f"link = {q(m.link)}",
                f"unit_id = {m.unit}",
                f"profile = {q(m.profile)}",
                f"utility = {q(m.utility)}",
            ]
            out += [f"building = {q(m.building)}"] if m.building else []
            out += [f"home = {q(m.home)}"] if m.home else []
            out += [f"role = {q(m.role)}", f"poll_s = {float(m.poll_s)!r}"]
        for io in self.io_modules:
            inputs = ", ".join(
                f"{{ number = {c.number}, meaning = {q(c.meaning)}, where = {q(c.where)}, "
                f"name = {q(c.name)}, abnormal = {q(c.abnormal)} }}"
                for c in io.inputs
            )
            outputs = ", ".join(
                f"{{ number = {o.number}, name = {q(o.name)}"
                + (f", meaning = {q(o.meaning)}" if o.meaning else "")
                + " }"
                for o in io.outputs
            )
            out += [
                "",
                "[[devices.io_modules]]",
                f"id = {q(io.id)}",
                f"link = {q(io.link)}",
                f"unit_id = {io.unit}",
                f"profile = {q(io.profile)}",
                f"poll_s = {float(io.poll_s)!r}",
                f"inputs = [{inputs}]",
                f"outputs = [{outputs}]",
            ]
        return "\n".join(out) + "\n"


def reference_slice(
    buildings: int = 2,
    *,
    household_poll_s: float | None = None,
    main_poll_s: float | None = None,
    site_mains: bool = True,
    site_id: str = "yiyuan-sim",
    name: str = "颐园世家（模拟）",
    name_en: str = "Yiyuan Shijia (simulated)",
) -> SiteLayout:
    """Towers B01…B``buildings`` of the reference site (../shared/reference-site).

    As meters.csv has them: per tower 54 homes (18 floors × 3), each with a
    CHINT DDSU666 on link ``Bnn-E`` and a Dynaflox ultraD on ``Bnn-W`` (unit id
    = (floor - 1) × 3 + home), a DTSU666 main (``Bnn-MAIN``) alone on
    ``Bnn-MAINBUS``; with ``site_mains`` also SITE-MAIN (SDM630, unit 1) and
    SITE-WATER (TUF-2000M, unit 2) on ``SITE-BUS``. Poll intervals as the CSV
    (900 s homes, 60 s building mains, SITE-MAIN 10 s, SITE-WATER 60 s) unless
    ``household_poll_s`` / ``main_poll_s`` say otherwise. One I/O module,
    ``IO-SLICE`` on ``IO-BUS``, carries points io_points.csv puts on IO01 and
    IO09: the fire panel's alarm and fault relays, the alarm contacts of both
    lifts of B01 and the first garage sump switch, all abnormal when closed.
    Every link is Modbus TCP: in simulation a serial device server per bus.
    """
    if not 1 <= buildings <= TOWERS:
        raise ValueError(f"the reference site has towers B01–B{TOWERS}, not {buildings}")
    meters: list[SimMeter] = []
    links: list[str] = []
    mains: list[SimMeter] = []
    homes_per_tower = TOWER_FLOORS * TOWER_HOMES_PER_FLOOR
    for b in range(1, buildings + 1):
        bid = f"B{b:02d}"
        links += [f"{bid}-E", f"{bid}-W", f"{bid}-MAINBUS"]
        for floor in range(1, TOWER_FLOORS + 1):
            for h in range(1, TOWER_HOMES_PER_FLOOR + 1):
                home = f"{bid}-{floor:02d}{h:02d}"
                unit = (floor - 1) * TOWER_HOMES_PER_FLOOR + h
                for suffix, utility, model in (
                    ("E", "electricity", "DDSU666"),
                    ("W", "water", "DYNAFLOX"),
                ):
                    meters.append(
                        SimMeter(
                            f"{home}-{suffix}",
                            f"{bid}-{suffix}",
                            unit,
                            REFERENCE_PROFILES[model],
                            utility,
                            "billed",
                            household_poll_s or 900.0,
                            building=bid,
                            home=home,
                        )
                    )
        mains.append(
            SimMeter(
                f"{bid}-MAIN",
                f"{bid}-MAINBUS",
                1,
                REFERENCE_PROFILES["DTSU666"],
                "electricity",
                "main",
                main_poll_s or 60.0,
                building=bid,
                kind="main",
                homes=homes_per_tower,
            )
        )
    meters += mains
    if site_mains:
        links.append("SITE-BUS")
        homes = homes_per_tower * buildings
        meters += [
            SimMeter(
                "SITE-MAIN",
                "SITE-BUS",
                1,
                REFERENCE_PROFILES["SDM630"],
                "electricity",
                "main",
                main_poll_s or 10.0,
                building="SITE",
                kind="main",
                homes=homes,
            ),
            SimMeter(
                "SITE-WATER",
                "SITE-BUS",
                2,
                REFERENCE_PROFILES["TUF2000M"],
                "water",
                "main",
                main_poll_s or 60.0,
                building="SITE",
                kind="main",
                homes=homes,
            ),
        ]
    links.append("IO-BUS")
    module = SimIoModule(
        "IO-SLICE",
        "IO-BUS",
        1,
        "relay-8in8out",
        inputs=(
            SimInput(1, "fire_panel_alarm", "fire control room", "消防主机火警"),
            SimInput(2, "fire_panel_fault", "fire control room", "消防主机故障"),
            SimInput(3, "elevator_alarm", "B01-L1", "1号楼1号电梯报警"),
            SimInput(4, "elevator_alarm", "B01-L2", "1号楼2号电梯报警"),
            SimInput(5, "sump_high", "garage sump pit 1", "地库1号集水井高水位"),
        ),
        outputs=(SimOutput(1, "值班室蜂鸣器 guard room sounder", "sounder"),),
    )
    return SiteLayout(site_id, name, name_en, tuple(links), tuple(meters), (module,))


def shipped_profiles_dir() -> Path:
    """``config/profiles`` of the source tree the package runs from.

    The package is installed editable (``pip install -e .``), so the folder
    sits next to the ``gateway`` package; an installed wheel has no profiles.
    """
    folder = Path(gateway.__file__).resolve().parent.parent / "config" / "profiles"
    if not folder.is_dir():
        raise ConfigError(
            [
                f"{folder}: the shipped device profiles are not there; the simulator "
                "needs a source checkout of the gateway (git clone, then pip install -e .)"
            ]
        )
    return folder
