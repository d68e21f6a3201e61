"""The site file: loading, one exact line per problem, secrets, check-config.

Every bad input must give exactly the expected line, naming file, key path,
value and reason, because that line is all a site engineer sees. Secrets must
never come out: not in reprs, dumps, error messages or the CLI's output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from gateway.alarms.plan import shipped_plan_path
from gateway.config import SiteConfig, load_site_config, parse_site_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example-site.toml"

HASH_A = "a" * 64
HASH_B = "b" * 64


# ---- helpers -------------------------------------------------------------------------


SHIPPED_PROFILES = Path(__file__).parent.parent / "config" / "profiles"


def site_text(extra: str = "", *, site_keys: str = "") -> str:
    """A minimal valid site file; ``site_keys`` go into [site], ``extra`` after it."""
    return (
        "[site]\n"
        'id = "test-site"\n'
        'name = "测试小区"\n'
        'profiles_dir = "profiles"\n' + site_keys + "\n" + extra
    )


def write_site(directory: Path, text: str, name: str = "site.toml") -> Path:
    """Write a site file into ``directory``, with the shipped profiles beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SHIPPED_PROFILES, directory / "profiles", dirs_exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    return info.value.problems


def the_problem(path: Path) -> str:
    """The one problem reported for ``path`` (fails if there are more or none)."""
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


def tcp_link(ident: str, host: str = "10.0.0.1") -> str:
    return f'\n[[links]]\nid = "{ident}"\ntype = "modbus_tcp"\nhost = "{host}"\n'


def serial_link(ident: str, device: str = "/dev/ttyUSB0") -> str:
    return f'\n[[links]]\nid = "{ident}"\ntype = "modbus_rtu"\ndevice = "{device}"\n'


def meter(ident: str, link: str = "L1", unit_id: int | str = 1, more: str = "") -> str:
    return (
        f'\n[[devices.meters]]\nid = "{ident}"\nlink = "{link}"\nunit_id = {unit_id}\n'
        f'profile = "chint-ddsu666"\nutility = "electricity"\n{more}'
    )


def io_module(ident: str, link: str = "L1", unit_id: int = 1) -> str:
    return (
        f'\n[[devices.io_modules]]\nid = "{ident}"\nlink = "{link}"\nunit_id = {unit_id}\n'
        'profile = "relay-8in8out"\n'
    )


def access_point(ident: str) -> str:
    return (
        f'\n[[devices.access_points]]\nid = "{ident}"\nkind = "turnstile"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "site/gates/{ident}"\n'
    )


MQTT = '\n[mqtt]\nhost = "127.0.0.1"\n'  # gates and barriers need the site broker


def patrol_wand(ident: str) -> str:
    return f'\n[[devices.patrol_wands]]\nid = "{ident}"\ndevice = "/dev/ttyUSB9"\n'


def user(name: str, token_hash: str = HASH_A, role: str = "guard") -> str:
    return f'\n[[users]]\nname = "{name}"\nrole = "{role}"\ntoken_sha256 = "{token_hash}"\n'


def sync(token: str = '"central-token"', more: str = "") -> str:
    return f'\n[sync]\nbase_url = "https://central.example.com"\ntoken = {token}\n{more}'


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUTF8="1")
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (to prove nothing changed)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(directory.rglob("*"))
    }


# ---- loading valid files ------------------------------------------------------------


def write_secret(path: Path, text: str) -> None:
    """A secret file as a site keeps it: readable by its owner only."""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


@pytest.fixture
def private_example_secrets() -> Iterator[None]:
    """The example's secret files as a site keeps them (git checks them out 0644,
    which the gateway refuses: see test_a_secret_file_others_can_read_is_refused)."""
    files = sorted((EXAMPLE.parent / "secrets").iterdir())
    modes = {f: f.stat().st_mode & 0o777 for f in files}
    for f in files:
        f.chmod(0o600)
    try:
        yield
    finally:
        for f, mode in modes.items():
            f.chmod(mode)


@pytest.mark.usefixtures("private_example_secrets")
def test_example_site_file_loads() -> None:
    config = load_site_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.site.id == "yiyuan-hefei"
    assert config.site.name == "颐园世家"
    assert config.site.timezone == "Asia/Shanghai"
    assert config.site.profiles_dir == EXAMPLE.parent / "profiles"
    assert config.journal.path.resolve() == (ROOT / "data" / "journal.db").resolve()
    assert config.api.host == "0.0.0.0"
    assert config.links[0].id == "B01-E"
    assert config.links[0].type == "modbus_rtu"
    assert {link.type for link in config.links} == {"modbus_rtu", "rtu_over_tcp", "modbus_tcp"}
    assert config.devices.meters[0].unit_id == 1
    assert {u.role for u in config.users} == {"guard", "supervisor", "admin", "central"}
    # file: secrets are read relative to the site file, without the trailing newline
    assert config.mqtt is not None and config.mqtt.password is not None
    expected = (EXAMPLE.parent / "secrets" / "mqtt-password.example").read_text("utf-8")
    assert config.mqtt.password.get_secret_value() == expected.strip()
    assert config.sync is not None
    expected = (EXAMPLE.parent / "secrets" / "central-token.example").read_text("utf-8")
    assert config.sync.token.get_secret_value() == expected.strip()


def test_minimal_site_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text())
    config = load_site_config(path)
    assert config.site.timezone == "Asia/Shanghai"
    assert config.site.zone.key == "Asia/Shanghai"
    assert config.site.name_en is None
    assert config.site.contingency_plan is None
    assert config.journal.path == tmp_path / "data" / "journal.db"
    assert config.journal.max_pending == 20_000
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8080)
    assert (config.service.heartbeat_s, config.service.shutdown_s) == (60.0, 5.0)
    assert config.mqtt is None
    assert config.sync is None
    assert config.links == []
    assert config.users == []
    assert config.device_ids() == []


def test_time_zone_can_be_set(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(site_keys='timezone = "Asia/Urumqi"\n'))
    assert load_site_config(path).site.zone.key == "Asia/Urumqi"


def test_relative_paths_are_relative_to_the_site_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_dir = tmp_path / "etc" / "gateway"
    (site_dir / "plans").mkdir(parents=True)
    (site_dir / "plans" / "plan.toml").write_text(SHIPPED_PLAN, encoding="utf-8")
    path = write_site(
        site_dir,
        site_text(
            '[journal]\npath = "../../var/journal.db"\n',
            site_keys='contingency_plan = "plans/plan.toml"\n',
        ),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    config = load_site_config(path)
    assert config.site.profiles_dir == site_dir / "profiles"
    assert config.site.contingency_plan == site_dir / "plans" / "plan.toml"
    assert config.journal.path.resolve() == (tmp_path / "var" / "journal.db").resolve()


def test_default_paths_are_relative_to_the_site_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_dir = tmp_path / "site"
    path = write_site(
        site_dir, '[site]\nid = "s"\nname = "Site"\n'
    )  # no profiles_dir, no [journal]
    monkeypatch.chdir(tmp_path)  # tmp_path has no profiles/ of its own
    config = load_site_config(path)
    assert config.site.profiles_dir == site_dir / "profiles"
    assert config.journal.path == site_dir / "data" / "journal.db"


def test_relative_site_file_path_works_from_its_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_site(tmp_path / "sub", site_text())
    monkeypatch.chdir(tmp_path)
    config = load_site_config("sub/site.toml")
    assert config.site.profiles_dir.resolve() == (tmp_path / "sub" / "profiles").resolve()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    journal = tmp_path / "abs" / "j.db"
    path = write_site(tmp_path / "site", site_text(f'[journal]\npath = "{journal}"\n'))
    assert load_site_config(path).journal.path == journal


def test_links_and_devices_of_every_kind(tmp_path: Path) -> None:
    text = site_text(
        tcp_link("L1")
        + serial_link("S1")
        + meter("M1", "L1", 1)
        + meter("M2", "S1", 1)  # the same unit id on another link is fine
        + io_module("IO1", "L1", 2)
        + access_point("GATE1")
        + patrol_wand("WAND1")
        + MQTT
    )
    config = load_site_config(write_site(tmp_path, text))
    assert [link.type for link in config.links] == ["modbus_tcp", "modbus_rtu"]
    assert config.links[0].port == 502
    assert config.links[1].baudrate == 9600
    assert config.device_ids() == ["M1", "M2", "IO1", "GATE1", "WAND1"]


def test_loaded_config_is_immutable(tmp_path: Path) -> None:
    config = load_site_config(write_site(tmp_path, site_text()))
    with pytest.raises(ValidationError):
        config.api.port = 9000  # type: ignore[misc]


def test_parse_site_config_names_the_given_source(tmp_path: Path) -> None:
    write_site(tmp_path, "")
    text = site_text(meter("M1", "nowhere"))
    with pytest.raises(ConfigError) as info:
        parse_site_config(text, tmp_path / "from-memory.toml")
    assert info.value.problems == [
        f'{tmp_path / "from-memory.toml"}: devices.meters[0].link: "nowhere" is not a declared link'
    ]


# ---- one exact line per problem ----------------------------------------------------

BAD_VALUES = [
    pytest.param(
        site_text(tcp_link("L1") + meter("M1", "L1", 300)),
        "devices.meters[0].unit_id: 300 is not a Modbus unit id (1–247)",
        id="unit-id-too-big",
    ),
    pytest.param(
        site_text(tcp_link("L1") + io_module("IO1", "L1", 0)),
        "devices.io_modules[0].unit_id: 0 is not a Modbus unit id (1–247)",
        id="unit-id-zero",
    ),
    pytest.param(
        site_text(site_keys='timezone = "Mars/Olympus_Mons"\n'),
        'site.timezone: "Mars/Olympus_Mons" is not a known time zone (e.g. Asia/Shanghai)',
        id="unknown-time-zone",
    ),
    pytest.param(
        site_text(site_keys='timezone = "asia/shanghai"\n'),
        'site.timezone: "asia/shanghai" is not a known time zone (e.g. Asia/Shanghai)',
        id="time-zone-wrong-case",
    ),
    pytest.param(
        '[site]\nid = "1号楼"\nname = "x"\nprofiles_dir = "profiles"\n',
        "site.id: \"1号楼\" is not a valid id (letters, digits, '_', '.', '-'; at most 64)",
        id="bad-site-id",
    ),
    pytest.param(
        '[site]\nid = "s"\nname = ""\nprofiles_dir = "profiles"\n',
        'site.name: "": string should have at least 1 character',
        id="empty-name",
    ),
    pytest.param(
        site_text("[api]\nport = 70000\n"),
        "api.port: 70000 is not a TCP port (0–65535)",
        id="port-out-of-range",
    ),
    pytest.param(
        site_text("[api]\nhost = 127001\n"),
        "api.host: 127001: input should be a valid string",
        id="wrong-type-string",
    ),
    pytest.param(
        site_text("[service]\nheartbeat_s = 0\n"),
        "service.heartbeat_s: 0 must be greater than 0",
        id="heartbeat-zero",
    ),
    pytest.param(
        site_text("[service]\nshutdown_s = 120\n"),
        "service.shutdown_s: 120: input should be less than or equal to 60",
        id="shutdown-too-long",
    ),
    pytest.param(
        site_text("[journal]\nmax_pending = 5\n"),
        "journal.max_pending: 5: input should be greater than or equal to 100",
        id="max-pending-too-small",
    ),
    pytest.param(
        site_text(tcp_link("L1") + meter("M1", unit_id='"three"')),
        'devices.meters[0].unit_id: "three": input should be a valid integer',
        id="wrong-type-integer",
    ),
    pytest.param(
        site_text(tcp_link("L1") + meter("M1", more="poll_s = 0.0\n")),
        "devices.meters[0].poll_s: 0.0 is too short: a meter is read at most once a second "
        "(poll_s >= 1)",
        id="poll-zero",
    ),
    pytest.param(
        site_text(
            tcp_link("L1") + meter("M1").replace('"electricity"', '"steam"'),
        ),
        "devices.meters[0].utility: \"steam\": input should be 'electricity', 'water', "
        "'gas' or 'heat'",
        id="bad-utility",
    ),
    pytest.param(
        site_text(serial_link("S1") + 'parity = "X"\n'),
        "links[0].parity: \"X\": input should be 'N', 'E' or 'O'",
        id="bad-parity",
    ),
    pytest.param(
        site_text(serial_link("S1") + "baudrate = 1234\n"),
        "links[0].baudrate: 1234: input should be 1200, 2400, 4800, 9600, 19200, 38400, "
        "57600 or 115200",
        id="bad-baudrate",
    ),
    pytest.param(
        site_text(tcp_link("L1") + "retries = 9\n"),
        "links[0].retries: 9: input should be less than or equal to 5",
        id="too-many-retries",
    ),
    pytest.param(
        site_text('\n[[links]]\nid = "L1"\ntype = "modbus_udp"\nhost = "h"\n'),
        'links[0].type: "modbus_udp" is not a link type (modbus_tcp, rtu_over_tcp, modbus_rtu)',
        id="bad-link-type",
    ),
    pytest.param(
        site_text(access_point("G1").replace('"turnstile"', '"gate"')),
        'devices.access_points[0].kind: "gate": input should be '
        "'door', 'turnstile', 'barrier', 'detector' or 'reader'",
        id="bad-access-point-kind",
    ),
    pytest.param(
        site_text(user("wang.fang", role="root")),
        "users[0].role: \"root\": input should be 'guard', 'supervisor', 'admin' or 'central'",
        id="bad-role",
    ),
    pytest.param(
        site_text(user("wang.fang", token_hash=HASH_A.upper())),
        "users[0].token_sha256: is not a SHA-256 hex digest "
        "(64 lower-case hex digits; make one with `gateway hash-token`)",
        id="token-hash-upper-case",
    ),
    pytest.param(
        site_text(user("wang.fang", token_hash="abc123")),
        "users[0].token_sha256: is not a SHA-256 hex digest "
        "(64 lower-case hex digits; make one with `gateway hash-token`)",
        id="token-hash-too-short",
    ),
    pytest.param(
        site_text(sync().replace("https://central.example.com", "ftp://central")),
        'sync.base_url: "ftp://central" must start with http:// or https://',
        id="base-url-not-http",
    ),
    pytest.param(
        site_text(sync(more='transport = "mqtt"\n')),
        'sync.transport: "mqtt" needs a [sync.mqtt] table (the central broker)',
        id="mqtt-transport-without-broker",
    ),
    pytest.param(
        site_text('[mqtt]\nhost = "mq.local"\ntls = true\nca_file = "site-ca.pem"\n'),
        'mqtt.ca_file: "{dir}/site-ca.pem" does not exist',
        id="site-broker-ca-file-missing",
    ),
    pytest.param(
        site_text(sync(more="batch_items = 5000\n")),
        "sync.batch_items: 5000: input should be less than or equal to 1000",
        id="batch-over-the-contract-limit",
    ),
    pytest.param(
        site_text(sync(more='\n[sync.mqtt]\nhost = "mq.example.com"\nca_file = "nope.pem"\n')),
        'sync.mqtt.ca_file: "{dir}/nope.pem" does not exist',
        id="mqtt-ca-file-missing",
    ),
    pytest.param(
        site_text('[devices.meters]\nid = "M1"\n'),
        "devices.meters: must be a list of tables — write [[devices.meters]]",
        id="single-bracket-list",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_VALUES)
def test_bad_value_gives_one_exact_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write_site(tmp_path, text)
    assert the_problem(path) == f"{path}: {expected.format(dir=tmp_path)}"


UNKNOWN_KEYS = [
    pytest.param(site_text("[sevice]\nheartbeat_s = 5\n"), "sevice", id="top-level-table"),
    pytest.param(site_text(site_keys='nmae = "x"\n'), "site.nmae", id="in-site"),
    pytest.param(site_text("[api]\nprot = 80\n"), "api.prot", id="in-api"),
    pytest.param(site_text(serial_link("S1") + "stopbit = 2\n"), "links[0].stopbit", id="in-link"),
    pytest.param(
        site_text(tcp_link("L1") + meter("M1") + meter("M2", unit_id=2, more='buidling = "B"\n')),
        "devices.meters[1].buidling",
        id="in-second-meter",
    ),
    pytest.param(site_text("[devices]\nsensors = []\n"), "devices.sensors", id="in-devices"),
    pytest.param(site_text(user("u") + 'dispaly_name = "x"\n'), "users[0].dispaly_name", id="user"),
    pytest.param(site_text(sync(more="enable = false\n")), "sync.enable", id="in-sync"),
]


@pytest.mark.parametrize(("text", "key"), UNKNOWN_KEYS)
def test_unknown_key_is_an_error(tmp_path: Path, text: str, key: str) -> None:
    path = write_site(tmp_path, text)
    assert the_problem(path) == f"{path}: {key}: unknown key (a typo? see docs/config.md)"


MISSING_KEYS = [
    pytest.param("", "site", id="no-site-table"),
    pytest.param('[site]\nname = "x"\nprofiles_dir = "profiles"\n', "site.id", id="site-id"),
    pytest.param(
        site_text(tcp_link("L1") + meter("M1").replace('profile = "chint-ddsu666"\n', "")),
        "devices.meters[0].profile",
        id="meter-profile",
    ),
    pytest.param(
        site_text('\n[[links]]\nid = "L1"\ntype = "modbus_tcp"\n'), "links[0].host", id="tcp-host"
    ),
    pytest.param(
        site_text('\n[[links]]\nid = "S1"\ntype = "modbus_rtu"\n'), "links[0].device", id="device"
    ),
    pytest.param(
        site_text('\n[sync]\nbase_url = "https://central.example.com"\n'),
        "sync.token",
        id="sync-token",
    ),
    pytest.param(
        site_text('\n[[users]]\nname = "u"\nrole = "guard"\n'),
        "users[0].token_sha256",
        id="user-token-hash",
    ),
]


@pytest.mark.parametrize(("text", "key"), MISSING_KEYS)
def test_missing_required_key_is_an_error(tmp_path: Path, text: str, key: str) -> None:
    path = write_site(tmp_path, text)
    assert the_problem(path) == f"{path}: {key}: required key is missing"


def test_link_without_type_is_an_error_naming_the_link(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text('\n[[links]]\nid = "L1"\nhost = "h"\n'))
    line = the_problem(path)
    assert line.startswith(f"{path}: links[0]")
    assert "type" in line


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    text = site_text('[api]\nport = 80\nhost = "127.0.0.1\n')  # unclosed string on line 8
    path = write_site(tmp_path, text)
    line = the_problem(path)
    assert line.startswith(f"{path}: not valid TOML: ")
    assert "(at line 8, column" in line


def test_table_declared_twice_is_malformed_toml(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text("[api]\nport = 1\n[api]\nport = 2\n"))
    line = the_problem(path)
    assert line.startswith(f"{path}: not valid TOML: ")
    assert "(at line 8, column" in line


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert the_problem(path) == f"{path}: no such file"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(site_text().encode("gb18030"))  # 测试小区 in GB18030, not UTF-8
    assert the_problem(path) == f"{path}: is not UTF-8 text; save it as UTF-8"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert the_problem(tmp_path).startswith(f"{tmp_path}: cannot read: ")


def test_time_zone_region_name_is_an_error(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(site_keys='timezone = "Asia"\n'))
    expected = 'site.timezone: "Asia" is not a known time zone (e.g. Asia/Shanghai)'
    assert the_problem(path) == f"{path}: {expected}"


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = site_text(
        "[api]\nport = 70000\nprot = 1\n"
        + tcp_link("L1")
        + meter("M1", "L1", 300)
        + meter("M2", "L1", 2).replace('profile = "chint-ddsu666"\n', ""),
        site_keys='timezone = "Nowhere/Town"\n',
    )
    path = write_site(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    expected = [
        f'{path}: site.timezone: "Nowhere/Town" is not a known time zone (e.g. Asia/Shanghai)',
        f"{path}: api.port: 70000 is not a TCP port (0–65535)",
        f"{path}: api.prot: unknown key (a typo? see docs/config.md)",
        f"{path}: devices.meters[0].unit_id: 300 is not a Modbus unit id (1–247)",
        f"{path}: devices.meters[1].profile: required key is missing",
    ]
    assert info.value.problems == expected
    assert str(info.value) == "\n".join(expected)


def test_config_error_hides_the_pydantic_error(tmp_path: Path) -> None:
    """pydantic's own message repeats input values; it must not show in tracebacks."""
    path = write_site(tmp_path, site_text("[api]\nport = 70000\n"))
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# ---- checks across the file -------------------------------------------------------


def test_device_ids_unique_across_meters_and_access_points(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(tcp_link("L1") + meter("X1") + access_point("X1") + MQTT))
    assert the_problem(path) == (
        f'{path}: devices.access_points[0].id: "X1" is already used by devices.meters[0].id'
    )


def test_device_id_may_not_repeat_a_link_id(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(tcp_link("L1") + meter("M1") + io_module("L1", "L1", 2)))
    assert the_problem(path) == (
        f'{path}: devices.io_modules[0].id: "L1" is already used by links[0].id'
    )


def test_link_ids_unique(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(tcp_link("L1") + serial_link("L1")))
    assert the_problem(path) == f'{path}: links[1].id: "L1" is already used by links[0].id'


def test_duplicate_ids_across_all_device_kinds(tmp_path: Path) -> None:
    text = site_text(
        tcp_link("L1")
        + meter("D")
        + io_module("D", "L1", 2)
        + access_point("D")
        + patrol_wand("D")
        + meter("M2", unit_id=3)
        + meter("M2", unit_id=4)
        + MQTT
    )
    path = write_site(tmp_path, text)
    assert problems(path) == [
        f'{path}: devices.meters[2].id: "M2" is already used by devices.meters[1].id',
        f'{path}: devices.io_modules[0].id: "D" is already used by devices.meters[0].id',
        f'{path}: devices.access_points[0].id: "D" is already used by devices.meters[0].id',
        f'{path}: devices.patrol_wands[0].id: "D" is already used by devices.meters[0].id',
    ]


def test_meter_on_an_undeclared_link(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(tcp_link("L1") + meter("M1", "B02-E")))
    assert the_problem(path) == f'{path}: devices.meters[0].link: "B02-E" is not a declared link'


def test_io_module_on_an_undeclared_link(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(io_module("IO1", "nowhere")))
    assert the_problem(path) == (
        f'{path}: devices.io_modules[0].link: "nowhere" is not a declared link'
    )


def test_a_link_must_be_a_link_not_a_device(tmp_path: Path) -> None:
    path = write_site(
        tmp_path, site_text(tcp_link("L1") + access_point("G1") + meter("M1", "G1") + MQTT)
    )
    assert the_problem(path) == f'{path}: devices.meters[0].link: "G1" is not a declared link'


def test_two_meters_with_one_unit_id_on_one_link(tmp_path: Path) -> None:
    path = write_site(
        tmp_path, site_text(tcp_link("L1") + meter("M1", unit_id=7) + meter("M2", unit_id=7))
    )
    assert the_problem(path) == (
        f'{path}: devices.meters[1].unit_id: 7 is already used on link "L1" by '
        "devices.meters[0].unit_id"
    )


def test_meter_and_io_module_share_the_unit_ids_of_a_link(tmp_path: Path) -> None:
    path = write_site(
        tmp_path, site_text(tcp_link("L1") + meter("M1", unit_id=5) + io_module("IO1", "L1", 5))
    )
    assert the_problem(path) == (
        f'{path}: devices.io_modules[0].unit_id: 5 is already used on link "L1" by '
        "devices.meters[0].unit_id"
    )


def test_duplicate_user_names(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(user("wang.fang", HASH_A) + user("wang.fang", HASH_B)))
    assert the_problem(path) == (
        f'{path}: users[1].name: "wang.fang" is already used by users[0].name'
    )


def test_two_users_with_the_same_token(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(user("wang.fang", HASH_A) + user("li.qiang", HASH_A)))
    assert the_problem(path) == (
        f"{path}: users[1].token_sha256: is the same token hash as "
        "users[0].token_sha256 (one token per person)"
    )


def test_profiles_dir_missing(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text().replace('"profiles"', '"no-such-dir"'))
    assert the_problem(path) == (
        f'{path}: site.profiles_dir: "{tmp_path / "no-such-dir"}" is not a directory'
    )


def test_profiles_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "profiles.txt").write_text("", encoding="utf-8")
    path = write_site(tmp_path, site_text().replace('"profiles"', '"profiles.txt"'))
    assert the_problem(path) == (
        f'{path}: site.profiles_dir: "{tmp_path / "profiles.txt"}" is not a directory'
    )


SHIPPED_PLAN = shipped_plan_path().read_text(encoding="utf-8")


def test_contingency_plan_missing(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(site_keys='contingency_plan = "plan.toml"\n'))
    assert the_problem(path) == (
        f'{path}: site.contingency_plan: "{tmp_path / "plan.toml"}" does not exist'
    )


def test_contingency_plan_present(tmp_path: Path) -> None:
    (tmp_path / "plan.toml").write_text(SHIPPED_PLAN, encoding="utf-8")
    path = write_site(tmp_path, site_text(site_keys='contingency_plan = "plan.toml"\n'))
    assert load_site_config(path).site.contingency_plan == tmp_path / "plan.toml"


def test_contingency_plan_is_validated_with_the_site(tmp_path: Path) -> None:
    broken = SHIPPED_PLAN.replace('priority = "P1"', 'priority = "P9"', 1)
    (tmp_path / "plan.toml").write_text(broken, encoding="utf-8")
    path = write_site(tmp_path, site_text(site_keys='contingency_plan = "plan.toml"\n'))
    line = the_problem(path)
    assert line.startswith(f"{tmp_path / 'plan.toml'}: types.") and '"P9"' in line


def test_cross_problems_are_reported_together(tmp_path: Path) -> None:
    text = site_text(
        tcp_link("L1")
        + meter("M1", "L1", 1)
        + meter("M1", "L2", 1)
        + user("u", HASH_A)
        + user("u", HASH_A),
        site_keys='contingency_plan = "plan.toml"\n',
    ).replace('"profiles"', '"nope"')
    path = write_site(tmp_path, text)
    assert problems(path) == [
        f'{path}: devices.meters[1].id: "M1" is already used by devices.meters[0].id',
        f'{path}: devices.meters[1].link: "L2" is not a declared link',
        f'{path}: users[1].name: "u" is already used by users[0].name',
        f"{path}: users[1].token_sha256: is the same token hash as "
        "users[0].token_sha256 (one token per person)",
        f'{path}: site.profiles_dir: "{tmp_path / "nope"}" is not a directory',
        f'{path}: site.contingency_plan: "{tmp_path / "plan.toml"}" does not exist',
    ]


# ---- secrets ------------------------------------------------------------------------

SECRET = "Zq7-very-secret-Kx9"


def test_env_secret_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_CENTRAL_TOKEN", SECRET)
    path = write_site(tmp_path, site_text(sync('"env:GW_TEST_CENTRAL_TOKEN"')))
    config = load_site_config(path)
    assert config.sync is not None
    assert isinstance(config.sync.token, SecretStr)
    assert config.sync.token.get_secret_value() == SECRET


def test_file_secret_is_relative_to_the_site_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_dir = tmp_path / "site"
    (site_dir / "secrets").mkdir(parents=True)
    write_secret(site_dir / "secrets" / "mqtt.pass", f"  {SECRET}\n")
    path = write_site(site_dir, site_text('[mqtt]\npassword = "file:secrets/mqtt.pass"\n'))
    monkeypatch.chdir(tmp_path)
    config = load_site_config(path)
    assert config.mqtt is not None and config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == SECRET


def test_file_secret_with_absolute_path(tmp_path: Path) -> None:
    secret_file = tmp_path / "elsewhere" / "signing.key"
    secret_file.parent.mkdir()
    write_secret(secret_file, SECRET)
    path = write_site(
        tmp_path / "site", site_text(sync(more=f'signing_secret = "file:{secret_file}"\n'))
    )
    config = load_site_config(path)
    assert config.sync is not None and config.sync.signing_secret is not None
    assert config.sync.signing_secret.get_secret_value() == SECRET


def test_literal_secret_is_kept(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(f'[mqtt]\nusername = "gw"\npassword = "{SECRET}"\n'))
    config = load_site_config(path)
    assert config.mqtt is not None and config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == SECRET


def test_missing_env_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_UNSET_VAR", raising=False)
    path = write_site(tmp_path, site_text(sync('"env:GW_TEST_UNSET_VAR"')))
    assert the_problem(path) == (
        f"{path}: sync.token: environment variable GW_TEST_UNSET_VAR is not set or empty"
    )


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text(SECRET, encoding="utf-8")
    path = write_site(tmp_path, site_text('[mqtt]\npassword = "file:mqtt.pass"\n'))
    for mode in (0o644, 0o604, 0o660):
        secret.chmod(mode)
        assert the_problem(path) == (
            f"{path}: mqtt.password: secret file {secret} is open to other users "
            f"(mode {mode:04o}): chmod 600 {secret} (or 640 with the gateway's group)"
        )
    for mode in (0o600, 0o640, 0o400):
        secret.chmod(mode)
        config = load_site_config(path)
        assert config.mqtt is not None and config.mqtt.password is not None


def test_missing_secret_file_is_named(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text('[mqtt]\npassword = "file:secrets/nope.pass"\n'))
    assert the_problem(path) == (
        f"{path}: mqtt.password: cannot read secret file {tmp_path / 'secrets' / 'nope.pass'}: "
        "No such file or directory"
    )


def test_empty_secrets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EMPTY_VAR", "")
    path = write_site(tmp_path, site_text(sync('"env:GW_TEST_EMPTY_VAR"')))
    assert the_problem(path) == (
        f"{path}: sync.token: environment variable GW_TEST_EMPTY_VAR is not set or empty"
    )
    write_secret(tmp_path / "empty.pass", "\n")
    path = write_site(tmp_path, site_text('[mqtt]\npassword = "file:empty.pass"\n'))
    assert the_problem(path) == (
        f"{path}: mqtt.password: secret file {tmp_path / 'empty.pass'} is empty"
    )


def test_numbers_and_booleans_are_not_coerced(tmp_path: Path) -> None:
    """TOML is typed: a quoted number or a boolean where a number belongs is a mistake."""
    path = write_site(tmp_path, site_text("[api]\nport = true\n"))
    assert the_problem(path) == f"{path}: api.port: true: input should be a valid integer"
    path = write_site(tmp_path, site_text('[api]\nport = "8080"\n'))
    assert the_problem(path) == f'{path}: api.port: "8080": input should be a valid integer'
    path = write_site(tmp_path, site_text('[mqtt]\ntls = "yes"\n'))
    assert the_problem(path) == f'{path}: mqtt.tls: "yes": input should be a valid boolean'


def test_secret_never_appears_in_the_loaded_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_secret, file_secret, literal_secret = SECRET + "-env", SECRET + "-file", SECRET + "-lit"
    monkeypatch.setenv("GW_TEST_MQTT_PASSWORD", env_secret)
    write_secret(tmp_path / "token", file_secret)
    text = site_text(
        '[mqtt]\npassword = "env:GW_TEST_MQTT_PASSWORD"\n'
        + sync('"file:token"', more=f'signing_secret = "{literal_secret}"\n')
    )
    config = load_site_config(write_site(tmp_path, text))
    assert config.mqtt is not None and config.sync is not None
    assert config.mqtt.password is not None and config.sync.signing_secret is not None
    assert config.mqtt.password.get_secret_value() == env_secret
    assert config.sync.token.get_secret_value() == file_secret
    assert config.sync.signing_secret.get_secret_value() == literal_secret
    shown = [
        str(config),
        repr(config),
        config.model_dump_json(),
        str(config.model_dump()),
        str(config.model_dump(mode="json")),
        repr(config.mqtt),
        repr(config.sync),
        f"{config.sync.token}",
    ]
    for text_shown in shown:
        assert SECRET not in text_shown


SECRET_IN_BAD_FILES = [
    pytest.param(
        f'[mqtt]\npassword = "{SECRET}"\nport = 70000\n',
        ["mqtt.port: 70000 is not a TCP port (0–65535)"],
        id="literal-secret-beside-another-error",
    ),
    pytest.param(
        f'[mqtt]\npassword = "{SECRET}"\npasword = "{SECRET}"\n',
        ["mqtt.pasword: unknown key (a typo? see docs/config.md)"],
        id="secret-under-a-misspelt-key",
    ),
    pytest.param(
        "[mqtt]\npassword = 73194628501\n",
        ["mqtt.password: <secret>: input should be a valid string"],
        id="secret-as-integer",
    ),
    pytest.param(
        f'[mqtt]\npassword = ["{SECRET}"]\n',
        ["mqtt.password: <secret>: input should be a valid string"],
        id="secret-as-list",
    ),
    pytest.param(
        sync(f'"{SECRET}"', more=f'signing_secret = {{ value = "{SECRET}" }}\n'),
        ["sync.signing_secret: <secret>: input should be a valid string"],
        id="secret-as-table",
    ),
    pytest.param(
        sync(f'"{SECRET}"').replace("https://", "ftp://"),
        ['sync.base_url: "ftp://central.example.com" must start with http:// or https://'],
        id="secret-in-section-with-bad-url",
    ),
    pytest.param(
        user("u") + f'token = "{SECRET}"\n',
        ["users[0].token: unknown key (a typo? see docs/config.md)"],
        id="plain-token-in-users",
    ),
    pytest.param(
        f'[mqtt]\npassword = "{SECRET}\n',
        None,  # malformed TOML on the secret's own line
        id="secret-on-a-malformed-line",
    ),
]


@pytest.mark.parametrize(("extra", "expected"), SECRET_IN_BAD_FILES)
def test_secret_never_appears_in_error_messages(
    tmp_path: Path, extra: str, expected: list[str] | None
) -> None:
    path = write_site(tmp_path, site_text(extra))
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    if expected is not None:
        assert info.value.problems == [f"{path}: {line}" for line in expected]
    secret = "73194628501" if "73194628501" in extra else SECRET
    for text in (str(info.value), repr(info.value), *info.value.problems):
        assert secret not in text


def test_resolved_secrets_stay_hidden_when_the_file_has_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_MQTT_PASSWORD", SECRET)
    write_secret(tmp_path / "token", SECRET)
    text = site_text(
        '[mqtt]\npassword = "env:GW_TEST_MQTT_PASSWORD"\nport = -1\n'
        + sync('"file:token"', more='transport = "smtp"\n')
    )
    path = write_site(tmp_path, text)
    found = problems(path)
    assert found == [
        f"{path}: mqtt.port: -1 is not a TCP port (0–65535)",
        f"{path}: sync.transport: \"smtp\": input should be 'http' or 'mqtt'",
    ]
    assert not any(SECRET in line for line in found)


def test_plain_token_pasted_as_hash_is_not_echoed(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(user("u", token_hash=SECRET)))
    line = the_problem(path)
    assert line.startswith(f"{path}: users[0].token_sha256: ")
    assert SECRET not in line


# ---- token hashes --------------------------------------------------------------------


def test_hash_token_prints_the_sha256_that_users_need(tmp_path: Path) -> None:
    result = run_cli("hash-token", SECRET)
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(SECRET.encode("utf-8")).hexdigest()
    assert result.stdout == digest + "\n"
    config = load_site_config(write_site(tmp_path, site_text(user("u", digest))))
    assert config.users[0].token_sha256 == digest


# ---- gateway check-config --------------------------------------------------------------


@pytest.mark.usefixtures("private_example_secrets")
def test_check_config_accepts_the_example() -> None:
    example = EXAMPLE
    config = load_site_config(example)
    d = config.devices
    result = run_cli("check-config", str(example))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (
        f"{example}: ok — site yiyuan-hefei (颐园世家), {len(config.links)} links, "
        f"{len(d.meters)} meters, {len(d.io_modules)} I/O modules, "
        f"{len(d.access_points)} access points, {len(d.patrol_wands)} patrol wands, "
        f"{len(config.users)} users\n"
    )


def test_check_config_of_a_minimal_site(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text())
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{path}: ok — site test-site (测试小区), 0 links, 0 meters, 0 I/O modules, "
        "0 access points, 0 patrol wands, 0 users\n"
    )


def test_check_config_reports_a_bad_file_on_stderr_with_exit_2(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(tcp_link("L1") + meter("M1", "L1", 300)))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{path}: devices.meters[0].unit_id: 300 is not a Modbus unit id (1–247)\n"
    )


def test_check_config_prints_one_line_per_problem(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text("[api]\nport = 70000\nprot = 1\n"))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}: api.port: 70000 is not a TCP port (0–65535)",
        f"{path}: api.prot: unknown key (a typo? see docs/config.md)",
    ]


def test_check_config_names_the_file_as_given(tmp_path: Path) -> None:
    write_site(tmp_path / "sub", site_text(meter("M1", "nowhere")))
    result = run_cli("check-config", "sub/site.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr == 'sub/site.toml: devices.meters[0].link: "nowhere" is not a declared link\n'
    )


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr == f"{tmp_path / 'nope.toml'}: no such file\n"


def test_check_config_does_not_print_secrets(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(f'[mqtt]\npassword = "{SECRET}"\nport = 70000\n'))
    bad = run_cli("check-config", str(path))
    assert bad.returncode == 2
    path.write_text(site_text(f'[mqtt]\npassword = "{SECRET}"\n'), encoding="utf-8")
    good = run_cli("check-config", str(path))
    assert good.returncode == 0, good.stderr
    for output in (bad.stdout, bad.stderr, good.stdout, good.stderr):
        assert SECRET not in output


def test_check_config_changes_nothing(tmp_path: Path) -> None:
    """Neither a bad file nor a good one is touched; no journal or folder appears."""
    bad = write_site(tmp_path, site_text("[api]\nport = 70000\n"), name="bad.toml")
    good = write_site(
        tmp_path, site_text('[journal]\npath = "data/journal.db"\n'), name="good.toml"
    )
    before = tree(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in (bad, good)}
    assert run_cli("check-config", str(bad), cwd=tmp_path).returncode == 2
    assert run_cli("check-config", str(good), cwd=tmp_path).returncode == 0
    assert tree(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in (bad, good)} == mtimes
    assert not (tmp_path / "data").exists()


def test_check_config_without_a_file_is_a_usage_error() -> None:
    result = run_cli("check-config")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_site_config_model_is_strict_everywhere() -> None:
    """Every section forbids unknown keys: a new model must not slip through lax."""
    seen: set[type] = set()
    pending: list[type] = [SiteConfig]
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("extra") == "forbid", model.__name__
        for info in model.model_fields.values():
            pending += _models(info.annotation)
    assert len(seen) >= 13


def _models(annotation: object) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type] = []
    for arg in typing.get_args(annotation):
        found += _models(arg)
    return found


def test_access_points_need_the_site_broker(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_text(access_point("G1")))
    assert the_problem(path) == (
        f"{path}: devices.access_points: gates and barriers are read over MQTT — "
        "add an [mqtt] table (the site broker)"
    )


def test_an_access_point_needs_an_mqtt_access_profile(tmp_path: Path) -> None:
    text = site_text(access_point("G1").replace("generic-json-gate", "eastron-sdm120") + MQTT)
    path = write_site(tmp_path, text)
    problem = the_problem(path)
    assert problem.startswith(
        f'{path}: devices.access_points[0].profile: "eastron-sdm120" is not an MQTT access '
        f"profile in {tmp_path / 'profiles'} (there: dahua-vto2mqtt, "
        "generic-json-checkpoint-reader, generic-json-detector, "
        "generic-json-gate"
    )
