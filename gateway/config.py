"""The site configuration: one TOML file per site, validated at start.

Every problem is reported as one line naming the file, the key path, the value
and the reason, e.g.::

    config/site.toml: devices.meters[3].unit_id: 300 is not a Modbus unit id (1–247)

Unknown keys are errors (a typo must not silently fall back to a default).
Secrets (``env:NAME`` / ``file:PATH`` / literal, see ``gateway.secrets``) are
resolved here and never echoed. Relative paths are relative to the site file.
The key reference is docs/config.md; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gateway.adapters.mqtt.profile import load_mqtt_profiles
from gateway.alarms.plan import load_plan
from gateway.config_base import (
    Ident,
    MeterPoll,
    Role,
    Seconds,
    TcpPort,
    TokenHash,
    UnitId,
    _HasSecrets,
    _resolve_path,
    _Section,
)
from gateway.errors import ConfigError
from gateway.patrol.model import PatrolSettings, patrol_checks
from gateway.profiles import load_profiles
from gateway.reports.model import ReportSettings, report_checks
from gateway.secrets import SECRET_KEYS
from gateway.validation import describe_error, format_loc, parse_toml, read_config_text


class SiteInfo(_Section):
    id: Ident
    name: str = Field(min_length=1)
    name_en: str | None = None
    timezone: str = "Asia/Shanghai"
    profiles_dir: Path = Field(default=Path("profiles"), validate_default=True)
    contingency_plan: Path | None = None

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "Asia" is a folder: OSError
            raise ValueError("is not a known time zone (e.g. Asia/Shanghai)") from None
        return value

    @field_validator("profiles_dir", "contingency_plan")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class JournalSettings(_Section):
    path: Path = Field(default=Path("data/journal.db"), validate_default=True)
    max_pending: StrictInt = Field(default=20_000, ge=100, le=1_000_000)
    commit_interval_ms: StrictInt = Field(default=10, ge=0, le=1000)
    """Shortest time between the starts of two commits (pacing: see gateway.journal.store)."""
    disk_low_mb: StrictInt = Field(default=200, ge=1, le=1_000_000)
    """Free space on the journal's filesystem below which the storage alarm is raised
    (while there is still room to record it)."""

    @field_validator("path")
    @classmethod
    def _relative_to_file(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: TcpPort = 8080


class ServiceSettings(_Section):
    """How the service itself behaves."""

    heartbeat_s: Seconds = 60.0
    shutdown_s: StrictFloat = Field(default=5.0, ge=1.0, le=60.0)


class MqttBroker(_HasSecrets):
    """The site's MQTT broker (gates, barriers, readers)."""

    host: str = "127.0.0.1"
    port: TcpPort = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: StrictBool = False
    ca_file: Path | None = None
    client_id: str | None = None

    @field_validator("ca_file")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)


Baudrate = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]


class ModbusTcpLink(_Section):
    id: Ident
    type: Literal["modbus_tcp", "rtu_over_tcp"]
    host: str
    port: TcpPort = 502
    timeout_s: Seconds = 1.0
    retries: StrictInt = Field(default=1, ge=0, le=5)
    offline_after: StrictInt = Field(default=3, ge=1, le=100)


class ModbusSerialLink(_Section):
    id: Ident
    type: Literal["modbus_rtu"]
    device: str = Field(description="serial device, e.g. /dev/ttyUSB0")
    baudrate: Baudrate = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: Seconds = 0.5
    retries: StrictInt = Field(default=1, ge=0, le=5)
    offline_after: StrictInt = Field(default=3, ge=1, le=100)


Link = Annotated[ModbusTcpLink | ModbusSerialLink, Field(discriminator="type")]


class Meter(_Section):
    id: Ident
    link: Ident
    unit_id: UnitId
    profile: str = Field(min_length=1)
    utility: Literal["electricity", "water", "gas", "heat"]
    building: str | None = None
    home: str | None = None
    role: Literal["billed", "main"] = "billed"
    poll_s: MeterPoll = 900.0
    # Per value of the profile, fields to replace: {import_kwh = {address = 0x401E}}.
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


class IoInput(_Section):
    """One dry contact wired to an input of an I/O module, and what it means."""

    number: StrictInt = Field(ge=1, le=256)
    meaning: Ident
    where: str | None = None
    name: str | None = None
    abnormal: Literal["closed", "open"] = "closed"


class IoOutput(_Section):
    """A relay output of an I/O module (a sounder, a beacon, a gate release)."""

    number: StrictInt = Field(ge=1, le=256)
    name: str = Field(min_length=1)
    meaning: Ident | None = None


class IoModule(_Section):
    id: Ident
    link: Ident
    unit_id: UnitId
    profile: str = Field(min_length=1)
    poll_s: Seconds = 0.25
    inputs: list[IoInput] = []
    outputs: list[IoOutput] = []


class AccessPoint(_Section):
    """A gate, door or parking barrier reached over MQTT."""

    id: Ident
    kind: Literal["door", "turnstile", "barrier", "detector", "reader"]
    profile: str = Field(min_length=1)
    topic_prefix: str = Field(min_length=1)
    name: str | None = None
    lot: str | None = None


class PatrolWand(_Section):
    id: Ident
    device: str
    baudrate: Baudrate = 9600


class Devices(_Section):
    meters: list[Meter] = []
    io_modules: list[IoModule] = []
    access_points: list[AccessPoint] = []
    patrol_wands: list[PatrolWand] = []


VehicleClass = Literal["temporary", "monthly", "vip", "stored_value"]


class ParkingLot(_Section):
    """A car park counted from its barriers' vehicle entry and exit events."""

    id: Ident
    name: str = Field(min_length=1)
    inside: Ident | None = None
    spaces: StrictInt = Field(ge=0)
    classes: dict[VehicleClass, Annotated[StrictInt, Field(ge=0)]] = {}


class Parking(_Section):
    lots: list[ParkingLot] = []


class MqttUpstream(_HasSecrets):
    """The central MQTT broker cluster, when ``sync.transport = "mqtt"``."""

    host: str
    port: TcpPort = 8883
    username: str | None = None
    password: SecretStr | None = None
    tls: StrictBool = True
    ca_file: Path | None = None
    client_id: str | None = None
    keepalive_s: StrictInt = Field(default=30, ge=5, le=3600)
    ack_timeout_s: Seconds = 10.0

    @field_validator("ca_file")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)


class SyncSettings(_HasSecrets):
    """The central billing and ticket system (../shared/contracts/central-api.md)."""

    enabled: StrictBool = True
    transport: Literal["http", "mqtt"] = "http"
    base_url: str

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    token: SecretStr
    signing_secret: SecretStr | None = None
    connect_timeout_s: Seconds = 5.0
    read_timeout_s: Seconds = 30.0
    batch_items: StrictInt = Field(default=1000, ge=1, le=1000)
    backoff_initial_s: Seconds = 1.0
    backoff_max_s: Seconds = 300.0
    auth_backoff_s: Seconds = 300.0
    pull_interval_s: Seconds = 60.0
    heartbeat_s: Seconds = 60.0
    backlog_max_mb: StrictInt = Field(default=2048, ge=1)
    mqtt: MqttUpstream | None = None


class User(_Section):
    name: Ident
    display_name: str | None = None
    role: Role
    token_sha256: TokenHash


class SiteConfig(_Section):
    """A whole site file, validated."""

    site: SiteInfo
    # Built from {} at load time, so its default path is resolved against the site file.
    journal: JournalSettings = Field(default_factory=dict, validate_default=True)
    api: ApiSettings = ApiSettings()
    service: ServiceSettings = ServiceSettings()
    mqtt: MqttBroker | None = None
    links: list[Link] = []
    devices: Devices = Devices()
    parking: Parking = Parking()
    sync: SyncSettings | None = None
    patrol: PatrolSettings = PatrolSettings()
    reports: ReportSettings = ReportSettings()
    users: list[User] = []
    _source: Path = PrivateAttr(default=Path("<memory>"))

    @property
    def source(self) -> Path:
        """The site file this configuration was read from."""
        return self._source

    def device_ids(self) -> list[str]:
        """Every configured device id, links excluded."""
        d = self.devices
        ids = [m.id for m in d.meters] + [m.id for m in d.io_modules]
        return ids + [a.id for a in d.access_points] + [w.id for w in d.patrol_wands]


# ---- loading and error reporting -----------------------------------------


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop pydantic's union-member tags (e.g. 'modbus_rtu') from a key path."""
    return tuple(p for p in loc if not (isinstance(p, str) and p in _LINK_TAGS))


_HIDDEN_KEYS = SECRET_KEYS | {"token_sha256"}  # a pasted token must not be echoed either
_LINK_TAGS = frozenset({"modbus_tcp", "rtu_over_tcp", "modbus_rtu"})


def _describe(error: Any, source: str) -> str:
    loc = _clean_loc(tuple(error["loc"]))
    where = f"{source}: {format_loc(loc)}"
    kind = error["type"]
    if kind == "union_tag_not_found":
        return f"{where}.type: required key is missing (modbus_tcp, rtu_over_tcp, modbus_rtu)"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        return f'{where}.type: "{tag}" is not a link type (modbus_tcp, rtu_over_tcp, modbus_rtu)'
    if kind == "list_type" and isinstance(error.get("input"), dict):
        return f"{where}: must be a list of tables — write [[{format_loc(loc)}]]"
    hidden = bool(loc) and str(loc[-1]) in _HIDDEN_KEYS
    return describe_error(error, where, keys_hint="a typo? see docs/config.md", hide_value=hidden)


def _cross_checks(config: SiteConfig, source: str) -> list[str]:
    """Checks that span sections: unique ids, references, files that must exist."""
    problems: list[str] = []
    seen: dict[str, str] = {}

    def claim(ident: str, key: str) -> None:
        if ident in seen:
            problems.append(f'{source}: {key}: "{ident}" is already used by {seen[ident]}')
        else:
            seen[ident] = key

    for i, link in enumerate(config.links):
        claim(link.id, f"links[{i}].id")
    d = config.devices
    sections: dict[str, list[Any]] = {
        "meters": list(d.meters),
        "io_modules": list(d.io_modules),
        "access_points": list(d.access_points),
        "patrol_wands": list(d.patrol_wands),
    }
    for name, items in sections.items():
        for i, item in enumerate(items):
            claim(item.id, f"devices.{name}[{i}].id")

    links = {link.id for link in config.links}
    for name in ("meters", "io_modules"):
        for i, item in enumerate(sections[name]):
            if item.link not in links:
                problems.append(
                    f'{source}: devices.{name}[{i}].link: "{item.link}" is not a declared link'
                )
    bus_units: dict[tuple[str, int], str] = {}
    for name in ("meters", "io_modules"):
        for i, item in enumerate(sections[name]):
            key = f"devices.{name}[{i}].unit_id"
            other = bus_units.setdefault((item.link, item.unit_id), key)
            if other != key:
                problems.append(
                    f"{source}: {key}: {item.unit_id} is already used on link "
                    f'"{item.link}" by {other}'
                )

    users: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for i, user in enumerate(config.users):
        if user.name in users:
            problems.append(
                f'{source}: users[{i}].name: "{user.name}" is already used by {users[user.name]}'
            )
        users.setdefault(user.name, f"users[{i}].name")
        if user.token_sha256 in tokens:
            problems.append(
                f"{source}: users[{i}].token_sha256: is the same token hash as "
                f"{tokens[user.token_sha256]}.token_sha256 (one token per person)"
            )
        tokens.setdefault(user.token_sha256, f"users[{i}]")

    if not config.site.profiles_dir.is_dir():
        problems.append(
            f'{source}: site.profiles_dir: "{config.site.profiles_dir}" is not a directory'
        )
    else:
        if d.meters or d.io_modules:
            problems += _profile_checks(config, source)
        problems += _access_point_checks(config, source)
    plan = config.site.contingency_plan
    if plan is not None and not plan.is_file():
        problems.append(f'{source}: site.contingency_plan: "{plan}" does not exist')
    else:
        try:
            load_plan(plan)
        except ConfigError as exc:
            problems += exc.problems
    problems += _parking_checks(config, source)
    problems += patrol_checks(
        config.patrol,
        {a.id for a in config.devices.access_points},
        set(config.device_ids()),
        source,
    )
    problems += report_checks(config.reports, source)
    if config.mqtt is not None and config.mqtt.ca_file is not None:
        if not config.mqtt.ca_file.is_file():
            problems.append(f'{source}: mqtt.ca_file: "{config.mqtt.ca_file}" does not exist')
    sync = config.sync
    if sync is not None and sync.transport == "mqtt" and sync.mqtt is None:
        problems.append(
            f'{source}: sync.transport: "mqtt" needs a [sync.mqtt] table (the central broker)'
        )
    if sync is not None and sync.mqtt is not None:
        ca_file = sync.mqtt.ca_file
        if ca_file is not None and not ca_file.is_file():
            problems.append(f'{source}: sync.mqtt.ca_file: "{ca_file}" does not exist')
    return problems


def _parking_checks(config: SiteConfig, source: str) -> list[str]:
    """Lots are unique, nested in declared lots, and what barriers count into."""
    lots = config.parking.lots
    problems: list[str] = []
    ids: dict[str, int] = {}
    for i, lot in enumerate(lots):
        if lot.id in ids:
            problems.append(
                f'{source}: parking.lots[{i}].id: "{lot.id}" is already used by '
                f"parking.lots[{ids[lot.id]}].id"
            )
        ids.setdefault(lot.id, i)
        if sum(lot.classes.values()) > lot.spaces:
            problems.append(
                f"{source}: parking.lots[{i}].classes: {sum(lot.classes.values())} spaces by "
                f"class is more than the lot's {lot.spaces}"
            )
    for i, lot in enumerate(lots):
        if lot.inside is not None and (lot.inside not in ids or lot.inside == lot.id):
            problems.append(
                f'{source}: parking.lots[{i}].inside: "{lot.inside}" is not another lot'
            )
    if lots:
        for i, point in enumerate(config.devices.access_points):
            if point.lot is not None and point.lot not in ids:
                problems.append(
                    f'{source}: devices.access_points[{i}].lot: "{point.lot}" is not a '
                    "lot of [[parking.lots]]"
                )
    return problems


def _access_point_checks(config: SiteConfig, source: str) -> list[str]:
    """Gates and barriers need the site broker and an MQTT access profile each."""
    points = config.devices.access_points
    if not points:
        return []
    problems = []
    if config.mqtt is None:
        problems.append(
            f"{source}: devices.access_points: gates and barriers are read over MQTT — "
            "add an [mqtt] table (the site broker)"
        )
    try:
        profiles = load_mqtt_profiles(config.site.profiles_dir)
    except ConfigError as exc:
        return problems + exc.problems
    for i, point in enumerate(points):
        if point.profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            problems.append(
                f'{source}: devices.access_points[{i}].profile: "{point.profile}" is not an '
                f"MQTT access profile in {config.site.profiles_dir} (there: {known})"
            )
    return problems


def _profile_checks(config: SiteConfig, source: str) -> list[str]:
    """Each Modbus device names a profile of the right kind; overrides and
    contact numbers fit the profile."""
    try:
        profiles = load_profiles(config.site.profiles_dir)
    except ConfigError as exc:
        return exc.problems
    problems: list[str] = []
    known = ", ".join(sorted(profiles)) or "none"
    for i, meter in enumerate(config.devices.meters):
        key = f"{source}: devices.meters[{i}]"
        profile = profiles.get(meter.profile)
        if profile is None or profile.kind != "meter":
            problems.append(f'{key}.profile: "{meter.profile}" is not a meter profile ({known})')
        elif meter.overrides:
            try:
                profile.with_overrides(meter.overrides, f"{key}.overrides")
            except ConfigError as exc:
                problems += exc.problems
    for i, module in enumerate(config.devices.io_modules):
        key = f"{source}: devices.io_modules[{i}]"
        profile = profiles.get(module.profile)
        if profile is None or profile.io is None:
            problems.append(
                f'{key}.profile: "{module.profile}" is not an I/O module profile ({known})'
            )
            continue
        contacts: tuple[tuple[str, Sequence[IoInput | IoOutput], int], ...] = (
            ("inputs", module.inputs, profile.io.discrete_inputs),
            ("outputs", module.outputs, profile.io.coils),
        )
        for name, items, limit in contacts:
            seen: set[int] = set()
            for j, item in enumerate(items):
                if item.number > limit:
                    problems.append(
                        f"{key}.{name}[{j}].number: {item.number} is beyond the module's "
                        f"{limit} {name} ({module.profile})"
                    )
                if item.number in seen:
                    problems.append(f"{key}.{name}[{j}].number: {item.number} is used twice")
                seen.add(item.number)
    return problems


def parse_site_config(text: str, source: Path) -> SiteConfig:
    """Validate site-file text; raise ConfigError listing every problem."""
    name = str(source)
    data = parse_toml(text, name)
    try:
        config = SiteConfig.model_validate(data, context={"base_dir": source.parent})
    except ValidationError as exc:
        raise ConfigError([_describe(error, name) for error in exc.errors()]) from None
    config._source = source
    problems = _cross_checks(config, name)
    if problems:
        raise ConfigError(problems)
    return config


def load_site_config(path: Path | str) -> SiteConfig:
    """Read and validate a site file; raise ConfigError naming file, key, value."""
    path = Path(path)
    return parse_site_config(read_config_text(path), path)
