"""Device profiles: one TOML file per device model, describing its Modbus map.

A meter profile lists named values (``import_kwh``, ``voltage_l1``, …), each a
register range with a type, word and byte order, function and scale; an I/O
module profile says where its discrete inputs and coils are. The format is
documented in config/profiles/README.md.

Everything a wrong map could get silently wrong is checked at load time, one
line per problem naming file, key path, value and reason, e.g.::

    config/profiles/x.toml: values[3].type: "float16" is not a value type (u16, …)

because a CDAB float read as ABCD, or two values sharing a register, gives
plausible-looking wrong numbers and no error at run time. The loaded profile
is a tree of frozen dataclasses: cheap to share between pollers, impossible to
change by accident.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.validation import describe_error, format_loc, format_value, read_config_text

# Registers each value type spans.
_REGISTER_COUNTS: Mapping[str, int] = {
    "u16": 1,
    "s16": 1,
    "u32": 2,
    "s32": 2,
    "u64": 4,
    "s64": 4,
    "float32": 2,
    "float64": 4,
}
_MODBUS_MAX_READ = 125  # registers in one function 03/04 request (Modbus spec)
_ADDRESS_LIMIT = 0x10000
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
T = TypeVar("T")
MQTT_ACCESS_KIND = "mqtt_access"  # profiles of this kind are not Modbus maps


# ---- the loaded profile ------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One register range of a value; most values have exactly one."""

    address: int
    type: str
    scale: float
    word_order: str
    byte_order: str

    @property
    def count(self) -> int:
        """Registers this part spans."""
        return _REGISTER_COUNTS[self.type]


@dataclass(frozen=True)
class ValueSpec:
    """A named value of a device: the sum of its parts, each ``raw * scale``."""

    name: str
    function: int
    parts: tuple[Part, ...]
    unit: str
    counter: bool
    rollover_at: float | None
    max_rate_per_h: float | None
    label_zh: str | None
    label_en: str | None

    # Cached: the poller asks for these for every value of every poll.
    @cached_property
    def address(self) -> int:
        """The first register of all parts."""
        return min(part.address for part in self.parts)

    @cached_property
    def end(self) -> int:
        """One past the last register of all parts."""
        return max(part.address + part.count for part in self.parts)

    @property
    def count(self) -> int:
        """Registers from ``address`` to ``end`` (gaps between parts included)."""
        return self.end - self.address


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers from ``address`` with ``function``."""

    function: int
    address: int
    count: int
    values: tuple[ValueSpec, ...]


@dataclass(frozen=True)
class IoLayout:
    """Where an I/O module keeps its inputs (function 02) and coils (01, 05/15)."""

    discrete_inputs_address: int
    discrete_inputs: int
    coils_address: int
    coils: int


@dataclass(frozen=True)
class Profile:
    """A validated device profile; ``id`` is the file name without ``.toml``.

    ``max_registers`` and ``max_gap`` are 0 for I/O modules (they read bits).
    """

    id: str
    name: str
    kind: str
    utility: str | None
    max_registers: int
    max_gap: int
    values: tuple[ValueSpec, ...]
    io: IoLayout | None
    source: Path

    def value(self, name: str) -> ValueSpec:
        """The value called ``name``; KeyError naming the profile if there is none."""
        for spec in self.values:
            if spec.name == name:
                return spec
        raise KeyError(f'profile "{self.id}" ({self.source}) has no value "{name}"')

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]], where: str) -> Profile:
        """This profile with some fields of some values replaced by a site file.

        A site must be able to fix one register (DTSU666 energy moves between
        firmware versions) without copying the profile. ``where`` is the key
        path of the overrides table, e.g. ``config/site.toml:
        devices.meters[2].overrides``; every problem line starts with it. On a
        composite value, ``address`` moves all parts together (their offsets
        kept) and orders apply to every part; ``type`` and ``scale`` are
        refused there (which part would they mean?).
        """
        if not overrides:
            return self
        problems: list[str] = []
        values = list(self.values)
        changed: list[int] = []
        index = {spec.name: i for i, spec in enumerate(values)}
        for name, fields in overrides.items():
            if name not in index:
                problems.append(
                    f'{where}: "{name}" is not a value of profile "{self.id}" ({", ".join(index)})'
                )
                continue
            spec, spec_problems = _override(values[index[name]], fields, f"{where}.{name}")
            problems += spec_problems
            values[index[name]] = spec
            changed.append(index[name])
        if not problems:
            problems = _layout_problems(
                values, self.max_registers, changed, lambda i: f"{where}.{values[i].name}"
            )
        if problems:
            raise ConfigError(problems)
        return replace(self, values=tuple(values))

    def blocks(self) -> tuple[Block, ...]:
        """The reads that fetch every value: few requests, none too large.

        Values of one function, in address order, share a block while the block
        stays within ``max_registers`` and the registers skipped between two
        values stay within ``max_gap``. A value is never split: its parts are
        decoded together. Computed on each call; a poller keeps the result.
        """
        blocks: list[Block] = []
        for function in sorted({spec.function for spec in self.values}):
            specs = sorted(
                (spec for spec in self.values if spec.function == function),
                key=lambda spec: spec.address,
            )
            blocks += self._coalesce(function, specs)
        return tuple(blocks)

    def _coalesce(self, function: int, specs: list[ValueSpec]) -> list[Block]:
        groups: list[list[ValueSpec]] = []
        for spec in specs:
            group = groups[-1] if groups else None
            if (
                group is not None
                and spec.address - group[-1].end <= self.max_gap
                and spec.end - group[0].address <= self.max_registers
            ):
                group.append(spec)
            else:
                groups.append([spec])
        return [
            Block(function, group[0].address, group[-1].end - group[0].address, tuple(group))
            for group in groups
        ]


# ---- the file format, validated by pydantic -----------------------------------


def _one_of(what: str, allowed: Iterable[Any], shown: str = "") -> AfterValidator:
    """A check that names every allowed value (``shown`` explains them, if given)."""
    choices = tuple(allowed)
    explained = shown or ", ".join(str(choice) for choice in choices)

    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"is not {what} ({explained})")
        return value

    return AfterValidator(check)


def _address(value: int) -> int:
    if not 0 <= value < _ADDRESS_LIMIT:
        raise ValueError("is not a register address (0–65535)")
    return value


def _max_registers(value: int) -> int:
    if not 1 <= value <= _MODBUS_MAX_READ:
        raise ValueError(f"is not a register count for one read (1–{_MODBUS_MAX_READ})")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _scale(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        raise ValueError("is not a scale (a finite number other than 0)")
    return value


def _positive(value: float) -> float:
    if not (value > 0 and math.isfinite(value)):  # also refuses nan
        raise ValueError("must be a finite number greater than 0")
    return value


def _value_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("is not a value name (a letter, then letters, digits or '_'; at most 64)")
    return value


_ValueType = Annotated[str, _one_of("a value type", _REGISTER_COUNTS)]
_WordOrder = Annotated[
    str,
    _one_of("a word order", ("big", "little"), "big = high word first (ABCD), little = CDAB"),
]
_ByteOrder = Annotated[
    str,
    _one_of("a byte order", ("big", "little"), "big, little = bytes swapped in each register"),
]
_Function = Annotated[
    StrictInt, _one_of("a register function", (3, 4), "3 = holding, 4 = input registers")
]
_Kind = Annotated[str, _one_of("a profile kind", ("meter", "io_module"))]
_Utility = Annotated[str, _one_of("a utility", ("electricity", "water", "gas", "heat"))]
_Address = Annotated[StrictInt, AfterValidator(_address)]
_Scale = Annotated[StrictFloat, AfterValidator(_scale)]
_Positive = Annotated[StrictFloat, AfterValidator(_positive)]


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Header(_Strict):
    name: str = Field(min_length=1)
    kind: _Kind
    utility: _Utility | None = None
    max_registers: Annotated[StrictInt, AfterValidator(_max_registers)] | None = None
    max_gap: Annotated[StrictInt, AfterValidator(_non_negative)] | None = None
    function: _Function | None = None
    word_order: _WordOrder | None = None
    byte_order: _ByteOrder | None = None


class _PartModel(_Strict):
    address: _Address
    type: _ValueType
    scale: _Scale = 1.0
    word_order: _WordOrder | None = None
    byte_order: _ByteOrder | None = None


class _ValueModel(_Strict):
    name: Annotated[str, AfterValidator(_value_name)]
    address: _Address | None = None
    type: _ValueType | None = None
    scale: _Scale | None = None
    parts: list[_PartModel] | None = Field(default=None, min_length=1)
    function: _Function | None = None
    word_order: _WordOrder | None = None
    byte_order: _ByteOrder | None = None
    unit: str = ""
    counter: StrictBool = False
    rollover_at: _Positive | None = None
    max_rate_per_h: _Positive | None = None
    label_zh: str | None = None
    label_en: str | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> _ValueModel:
        """A value is one register range (address + type) or a sum of parts."""
        single = (self.address, self.type, self.scale)
        if self.parts is not None and any(key is not None for key in single):
            raise ValueError(
                "has both parts and address/type/scale (a value is either "
                "address + type or a list of [[values.parts]], each with its own scale)"
            )
        if self.parts is None and (self.address is None or self.type is None):
            raise ValueError("needs address and type, or [[values.parts]]")
        spans = sorted((p.address, p.address + _REGISTER_COUNTS[p.type]) for p in self.parts or [])
        for (_, end), (address, _) in pairwise(spans):
            if address < end:
                raise ValueError(f"parts overlap at register 0x{address:04X}")
        return self


class _BitRange(_Strict):
    address: _Address
    count: StrictInt = Field(ge=1, le=2000)


class _Io(_Strict):
    discrete_inputs: _BitRange | None = None
    coils: _BitRange | None = None


class _ProfileFile(_Strict):
    profile: _Header
    values: list[_ValueModel] | None = None
    io: _Io | None = None


class _Override(_Strict):
    """The fields of one value a site file may replace (``Profile.with_overrides``)."""

    address: _Address | None = None
    type: _ValueType | None = None
    function: _Function | None = None
    scale: _Scale | None = None
    word_order: _WordOrder | None = None
    byte_order: _ByteOrder | None = None
    unit: str | None = None
    rollover_at: _Positive | None = None
    max_rate_per_h: _Positive | None = None


# ---- error lines -------------------------------------------------------------


def _describe(error: Any, prefix: str, keys_hint: str = "see config/profiles/README.md") -> str:
    """One pydantic error as a line; ``prefix`` is "file: " or "where.value."."""
    return describe_error(error, prefix + format_loc(error["loc"]), keys_hint=keys_hint)


def _span(spec: ValueSpec) -> str:
    return f"registers 0x{spec.address:04X}–0x{spec.end - 1:04X}"


def _layout_problems(
    values: list[ValueSpec],
    max_registers: int,
    checked: Collection[int],
    key: Callable[[int], str],
) -> list[str]:
    """What is wrong with ``values[i]`` for each i in ``checked``, as lines led by ``key(i)``.

    An overlap between two checked values is reported once, at the later one.
    """
    problems: list[str] = []
    for i in sorted(checked):
        spec = values[i]
        if spec.end > _ADDRESS_LIMIT:
            problems.append(f'{key(i)}: "{spec.name}" ({_span(spec)}) runs past register 0xFFFF')
        if spec.count > max_registers:
            problems.append(
                f'{key(i)}: "{spec.name}" spans {spec.count} registers, more than '
                f"profile.max_registers = {max_registers} (a value is never split across reads)"
            )
        if not spec.counter and (spec.rollover_at is not None or spec.max_rate_per_h is not None):
            problems.append(
                f'{key(i)}: "{spec.name}" has rollover_at or max_rate_per_h but is not a '
                "counter (set counter = true)"
            )
        for j, other in enumerate(values):
            if j != i and (j < i or j not in checked) and _overlap(spec, other):
                problems.append(
                    f'{key(i)}: "{spec.name}" (function {spec.function}, {_span(spec)}) '
                    f'overlaps "{other.name}" ({_span(other)})'
                )
    return problems


def _overlap(a: ValueSpec, b: ValueSpec) -> bool:
    return a.function == b.function and a.address < b.end and b.address < a.end


# ---- building the profile ----------------------------------------------------


def _part(model: _PartModel, word_order: str, byte_order: str) -> Part:
    return Part(
        address=model.address,
        type=model.type,
        scale=float(model.scale),
        word_order=model.word_order or word_order,
        byte_order=model.byte_order or byte_order,
    )


def _value_spec(model: _ValueModel, header: _Header) -> ValueSpec:
    """A value with the profile's defaults filled in (checked present before)."""
    assert header.function is not None and header.word_order is not None
    word_order = model.word_order or header.word_order
    byte_order = model.byte_order or header.byte_order or "big"
    if model.parts is None:
        assert model.address is not None and model.type is not None
        parts = [_PartModel(address=model.address, type=model.type, scale=model.scale or 1.0)]
    else:
        parts = model.parts
    return ValueSpec(
        name=model.name,
        function=model.function or header.function,
        parts=tuple(_part(part, word_order, byte_order) for part in parts),
        unit=model.unit,
        counter=model.counter,
        rollover_at=model.rollover_at,
        max_rate_per_h=model.max_rate_per_h,
        label_zh=model.label_zh,
        label_en=model.label_en,
    )


_METER_KEYS = {
    "utility": "electricity, water, gas or heat",
    "max_registers": "the most registers one request may read",
    "function": "3 = holding or 4 = input registers, the default for every value",
    "word_order": "big = ABCD or little = CDAB; reading one as the other gives wrong "
    "numbers and no error",
}
_REGISTER_KEYS = ("utility", "max_registers", "max_gap", "function", "word_order", "byte_order")


def _kind_problems(data: _ProfileFile, src: str) -> list[str]:
    """Keys a meter must have and an I/O module must not, and vice versa."""
    header = data.profile
    if header.kind == "io_module":
        problems = [
            f"{src}: profile.{key}: only meter profiles have it (an io_module reads bits)"
            for key in _REGISTER_KEYS
            if key in header.model_fields_set
        ]
        if data.values is not None:
            problems.append(f"{src}: values: an io_module has no values (use [io])")
        if data.io is None:
            problems.append(
                f"{src}: io: required for an io_module: [io] with discrete_inputs and/or coils"
            )
        elif data.io.discrete_inputs is None and data.io.coils is None:
            problems.append(f"{src}: io: needs discrete_inputs or coils (or both)")
        return problems
    problems = [
        f"{src}: profile.{key}: required key is missing for a meter ({why})"
        for key, why in _METER_KEYS.items()
        if getattr(header, key) is None
    ]
    if not data.values:
        problems.append(f"{src}: values: a meter needs at least one [[values]]")
    if data.io is not None:
        problems.append(f"{src}: io: only io_module profiles have [io]")
    return problems


def _name_problems(values: list[ValueSpec], src: str) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(values):
        if spec.name in seen:
            first = seen[spec.name]
            problems.append(
                f'{src}: values[{i}].name: "{spec.name}" is already used by values[{first}]'
            )
        seen.setdefault(spec.name, i)
    return problems


def _io_layout(io: _Io) -> IoLayout:
    inputs, coils = io.discrete_inputs, io.coils
    return IoLayout(
        discrete_inputs_address=inputs.address if inputs else 0,
        discrete_inputs=inputs.count if inputs else 0,
        coils_address=coils.address if coils else 0,
        coils=coils.count if coils else 0,
    )


def _build(data: _ProfileFile, path: Path) -> Profile:
    src = str(path)
    problems = _kind_problems(data, src)
    if problems:
        raise ConfigError(problems)
    header = data.profile
    values = [_value_spec(model, header) for model in data.values or []]
    max_registers = header.max_registers or 0
    problems = _name_problems(values, src) + _layout_problems(
        values, max_registers, range(len(values)), lambda i: f"{src}: values[{i}]"
    )
    if problems:
        raise ConfigError(problems)
    return Profile(
        id=path.stem,
        name=header.name,
        kind=header.kind,
        utility=header.utility,
        max_registers=max_registers,
        max_gap=header.max_gap or 0,
        values=tuple(values),
        io=_io_layout(data.io) if data.io else None,
        source=path,
    )


def _parse_profile(text: str, path: Path) -> Profile:
    """Validate profile text read from ``path``; raise ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    try:
        data = _ProfileFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(error, f"{path}: ") for error in exc.errors()]) from None
    return _build(data, path)


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file; its id is the file name without ``.toml``."""
    return _parse_profile(read_config_text(path), path)


def is_mqtt_access_profile(path: Path) -> bool:
    """Whether ``path`` says ``[profile] kind = "mqtt_access"``.

    MQTT access profiles share this folder but are loaded by
    gateway.adapters.mqtt.profile. A file that cannot be read or parsed is
    not one: ``load_profile`` then reports what is wrong with it.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    header = raw.get("profile")
    return isinstance(header, dict) and header.get("kind") == MQTT_ACCESS_KIND


def load_folder(
    folder: Path, wanted: Callable[[Path], bool], load: Callable[[Path], T]
) -> dict[str, T]:
    """Every wanted ``*.toml`` in ``folder`` by id (file name without ``.toml``);
    one ConfigError with the problems of all files, so a site engineer sees them
    at once."""
    if not folder.is_dir():
        raise ConfigError([f"{folder}: is not a directory"])
    loaded: dict[str, T] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.toml")):
        if not wanted(path):
            continue
        try:
            loaded[path.stem] = load(path)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return loaded


def load_profiles(folder: Path) -> dict[str, Profile]:
    """Every Modbus profile in ``folder`` by id; MQTT access profiles are skipped
    (``is_mqtt_access_profile``)."""
    return load_folder(folder, lambda path: not is_mqtt_access_profile(path), load_profile)


# ---- site overrides ----------------------------------------------------------


def _override(spec: ValueSpec, fields: Any, where: str) -> tuple[ValueSpec, list[str]]:
    """``spec`` with ``fields`` applied, or the problems found (lines led by ``where``)."""
    if not isinstance(fields, Mapping):
        return spec, [f"{where}: {format_value(fields)} must be a table, e.g. {{ address = 0 }}"]
    try:
        change = _Override.model_validate(dict(fields))
    except ValidationError as exc:
        hint = f"allowed: {', '.join(_Override.model_fields)}"
        return spec, [_describe(error, f"{where}.", hint) for error in exc.errors()]
    refused = [key for key in ("type", "scale") if key in change.model_fields_set]
    if refused and len(spec.parts) > 1:
        return spec, [
            f"{where}.{key}: {format_value(getattr(change, key))} cannot apply to a value "
            "made of parts (which part?); copy the profile instead"
            for key in refused
        ]
    return _apply(spec, change), []


def _apply(spec: ValueSpec, change: _Override) -> ValueSpec:
    """Replace the fields set in ``change``; a new address moves all parts together."""
    shift = 0 if change.address is None else change.address - spec.address
    parts = tuple(
        replace(
            part,
            address=part.address + shift,
            type=change.type or part.type,
            scale=part.scale if change.scale is None else float(change.scale),
            word_order=change.word_order or part.word_order,
            byte_order=change.byte_order or part.byte_order,
        )
        for part in spec.parts
    )
    return replace(
        spec,
        parts=parts,
        function=change.function or spec.function,
        unit=spec.unit if change.unit is None else change.unit,
        rollover_at=change.rollover_at or spec.rollover_at,
        max_rate_per_h=change.max_rate_per_h or spec.max_rate_per_h,
    )
