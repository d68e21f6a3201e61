"""Hypothesis over the gateway's parsers: whatever arrives, each one answers with a
value or its own refusal, never an unexpected exception. (The MQTT profiles are
fuzzed in test_mqtt_profiles.py, the HTTP API with schemathesis in
test_fuzz_api.py.)

- Modbus decoding: any register contents for every value of every shipped profile.
- Patrol-wand lines: any bytes from the cradle, any record text.
- Site files: the example site with values swapped for random TOML values and
  lines dropped, and with random bytes changed: a ConfigError naming the problem,
  or a valid configuration.
- The scanning page's URL ``/p/{checkpoint}?s=``: any text, with a session, never
  a server error; markup in it is never markup on the page.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapters.modbus.decode import decode_value
from gateway.adapters.serial.wand import BadRecord, WandRecord, decode_line, read_record
from gateway.config import SiteConfig, load_site_config
from gateway.errors import ConfigError
from gateway.profiles import load_profiles
from tests.harness.patrol import patrol_site
from tests.harness.site import Site, running

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "config" / "profiles"
EXAMPLE = ROOT / "config" / "example-site.toml"
FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

VALUE_SPECS = [
    (profile_id, spec)
    for profile_id, profile in sorted(load_profiles(PROFILES).items())
    for spec in profile.values
]


@pytest.mark.parametrize(
    "spec", [s for _, s in VALUE_SPECS], ids=[f"{p}:{s.name}" for p, s in VALUE_SPECS]
)
def test_modbus_decoding_takes_any_register_contents(spec: object) -> None:
    count = spec.count  # type: ignore[attr-defined]

    @settings(max_examples=60, deadline=None)
    @given(registers=st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    def check(registers: list[int]) -> None:
        value = decode_value(spec, registers)  # type: ignore[arg-type]
        assert isinstance(value, int | float)
        if isinstance(value, float) and not math.isfinite(value):
            return  # NaN/inf: the reading's validation refuses it (test_meter_book)

    check()


@FAST
@given(raw=st.binary(max_size=120))
def test_any_bytes_from_the_wand_cradle_are_a_line_or_noise(raw: bytes) -> None:
    line = decode_line(raw)
    assert line is None or (isinstance(line[0], str) and isinstance(line[1], bool))


@FAST
@given(
    text=st.text(max_size=60)
    | st.from_regex(r"[0-9A-Fa-f]{4}[0-9]{12} ?[0-9A-Fa-f]{10}", fullmatch=True)
)
def test_any_record_text_is_a_record_or_a_reason(text: str) -> None:
    record = read_record(text)
    if isinstance(record, BadRecord):
        assert record.reason
    else:
        assert isinstance(record, WandRecord) and record.number > 0


# ---- site files ----------------------------------------------------------------------


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


_ASSIGNMENT = re.compile(r"^(\s*[A-Za-z_][\w.-]*\s*=\s*)(\S.*)$")
TOML_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(_toml_float),
    st.text(max_size=20).map(json.dumps),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.sampled_from(["[]", "{}", "[1, 2]", '["a", 1]', "{ a = 1 }", "1979-05-27T07:32:00Z"]),
    st.sampled_from(['"../../etc/passwd"', '"env:NOT_SET_ANYWHERE"', '"file:/nonexistent"']),
)


def _example_text(folder: Path) -> str:
    """The example site, with paths and secrets that work from ``folder``."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace('profiles_dir = "profiles"', f'profiles_dir = "{PROFILES}"')
    text = text.replace('path = "../data/journal.db"', f'path = "{folder / "journal.db"}"')
    return re.sub(r'"file:secrets/[^"]+"', '"a-literal-secret"', text)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("fuzz-config")
    lines = _example_text(folder).splitlines()
    assert isinstance(_load(folder / "site.toml", lines), SiteConfig), "the base must be valid"
    return folder, lines


def _load(path: Path, lines: list[str]) -> SiteConfig | ConfigError:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        return load_site_config(path)
    except ConfigError as exc:
        assert exc.problems and all(str(path) in p for p in exc.problems), exc.problems
        return exc


@FAST
@given(data=st.data())
def test_site_files_with_random_values_are_refused_clearly(
    example: tuple[Path, list[str]], data: st.DataObject
) -> None:
    folder, lines = example
    editable = [i for i, line in enumerate(lines) if _ASSIGNMENT.match(line)]
    changed = list(lines)
    for index in data.draw(st.lists(st.sampled_from(editable), min_size=1, max_size=3)):
        if data.draw(st.booleans()):
            changed[index] = ""  # the key is gone
        else:
            match = _ASSIGNMENT.match(lines[index])
            assert match is not None
            changed[index] = match.group(1) + data.draw(TOML_VALUES)
    _load(folder / "site.toml", changed)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=3)), max_size=4))
def test_site_files_with_random_bytes_are_refused_clearly(
    example: tuple[Path, list[str]], edits: list[tuple[float, bytes]]
) -> None:
    folder, lines = example
    raw = bytearray(("\n".join(lines) + "\n").encode("utf-8"))
    for where, junk in edits:
        at = int(where * (len(raw) - 1))
        raw[at : at + len(junk)] = junk
    path = folder / "bytes.toml"
    path.write_bytes(bytes(raw))
    try:
        load_site_config(path)
    except ConfigError as exc:
        assert exc.problems and all(str(path) in p for p in exc.problems), exc.problems


# ---- the scanning page's URL --------------------------------------------------------------


@pytest.fixture(scope="module")
def patrol_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, httpx.Client]]:
    site = patrol_site(tmp_path_factory.mktemp("fuzz-patrol"))
    with running(site), httpx.Client(base_url=site.url, timeout=10) as client:
        login = client.post("/login", data={"name": "guard1", "token": site.tokens["guard"]})
        assert login.status_code == 303 and "gw_session" in client.cookies
        yield site, client


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    checkpoint=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=80),
    sig=st.text(st.characters(blacklist_categories=["Cs"]), max_size=80),
)
def test_the_scanning_page_takes_any_qr_url(
    patrol_gateway: tuple[Site, httpx.Client], checkpoint: str, sig: str
) -> None:
    _, client = patrol_gateway
    answer = client.get(f"/p/{quote(checkpoint, safe='')}", params={"s": sig})
    assert answer.status_code < 500, answer.text[:200]


def test_markup_in_a_qr_url_is_never_markup_on_the_page(
    patrol_gateway: tuple[Site, httpx.Client],
) -> None:
    _, client = patrol_gateway
    probe = '"><svg onload=alert(1)><img src=x onerror=alert(2)>'  # no "/": one path segment
    answer = client.get(f"/p/{quote(probe, safe='')}", params={"s": probe})
    assert answer.status_code == 200
    assert "<svg onload" not in answer.text and "<img src=x" not in answer.text
