"""The documentation stays in step with the code.

docs/config.md is the site engineer's key reference. These tests walk the
pydantic models of the site file and fail, naming the key, when a key is not
documented in its table's section, a default or an allowed value in the doc is
out of date, or the doc lists a key the models do not have. README.md must
show every ``gateway`` subcommand.
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from gateway.auth import PERMISSIONS
from gateway.cli import build_parser
from gateway.config import SiteConfig
from gateway.config_base import Role

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DOC = ROOT / "docs" / "config.md"
README = ROOT / "README.md"


# ---- walking the models -----------------------------------------------------


def _nested_models(
    annotation: Any, in_list: bool = False
) -> Iterator[tuple[type[BaseModel], bool]]:
    """Models reachable from an annotation (through Optional, unions, Annotated,
    lists), each with whether it sits in a list (a TOML array of tables)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, in_list
        return
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return
    if origin in (list, tuple, set, frozenset):
        in_list = True
    for arg in typing.get_args(annotation):
        yield from _nested_models(arg, in_list)


def _literal_values(annotation: Any) -> list[Any]:
    """The allowed values of a Literal field (also inside Optional/Annotated)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    values: list[Any] = []
    for arg in typing.get_args(annotation):
        if not isinstance(arg, FieldInfo):
            values += _literal_values(arg)
    return values


@dataclass
class Table:
    """One TOML table of the site file, e.g. ``[mqtt]`` or ``[[devices.meters]]``."""

    path: str
    is_array: bool
    models: list[type[BaseModel]] = field(default_factory=list)

    @property
    def header(self) -> str:
        return f"[[{self.path}]]" if self.is_array else f"[{self.path}]"

    def keys(self) -> dict[str, list[FieldInfo]]:
        """Plain keys of the table (not sub-tables), with their field per model."""
        keys: dict[str, list[FieldInfo]] = {}
        for model in self.models:
            for name, info in model.model_fields.items():
                if not list(_nested_models(info.annotation)):
                    keys.setdefault(name, []).append(info)
        return keys

    def sub_tables(self) -> set[str]:
        """Keys holding inline tables (e.g. ``inputs = [{…}]``): documented in the
        parent's table too, with their own section for their keys."""
        return {
            name
            for model in self.models
            for name, info in model.model_fields.items()
            if list(_nested_models(info.annotation))
        }


def site_tables() -> list[Table]:
    """Every table of the site file that has keys of its own, in model order."""
    tables: dict[str, Table] = {}

    def walk(model: type[BaseModel], path: str, is_array: bool) -> None:
        if path:
            table = tables.setdefault(path, Table(path, is_array))
            if model not in table.models:
                table.models.append(model)
        for name, info in model.model_fields.items():
            for sub, sub_is_array in _nested_models(info.annotation):
                walk(sub, f"{path}.{name}" if path else name, sub_is_array)

    walk(SiteConfig, "", False)
    return [table for table in tables.values() if table.keys()]


def test_the_model_walk_finds_every_table() -> None:
    """Guards the walker itself: a walk that finds nothing would pass every check."""
    headers = {table.header for table in site_tables()}
    assert headers == {
        "[site]",
        "[journal]",
        "[api]",
        "[service]",
        "[mqtt]",
        "[[links]]",
        "[[devices.meters]]",
        "[[devices.io_modules]]",
        "[[devices.io_modules.inputs]]",
        "[[devices.io_modules.outputs]]",
        "[[devices.access_points]]",
        "[[devices.patrol_wands]]",
        "[[parking.lots]]",
        "[patrol]",
        "[[patrol.checkpoints]]",
        "[[patrol.routes]]",
        "[[patrol.routes.stops]]",
        "[[patrol.schedules]]",
        "[[patrol.guards]]",
        "[reports]",
        "[[reports.categories]]",
        "[[reports.categories.subcategories]]",
        "[reports.commitments]",
        "[sync]",
        "[sync.mqtt]",
        "[[users]]",
    }
    links = next(t for t in site_tables() if t.path == "links")
    assert {"host", "device", "baudrate", "parity", "stopbits"} <= set(links.keys())


# ---- reading the doc ------------------------------------------------------------


def _doc_lines() -> list[str]:
    return CONFIG_DOC.read_text(encoding="utf-8").splitlines()


def _section(lines: list[str], header: str) -> list[str]:
    """The lines under the heading naming ``header`` up to the next heading of the
    same or a higher level (sub-headings stay inside)."""
    pattern = re.compile(r"(?<!\[)" + re.escape(header) + r"(?!\])")
    in_code = False
    start = level = None
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"^(#{1,6})\s", line)
        if heading is None:
            continue
        if start is not None and len(heading.group(1)) <= level:
            return lines[start:i]
        if start is None and pattern.search(line):
            start, level = i + 1, len(heading.group(1))
    if start is None:
        return []
    return lines[start:]


def _tables(lines: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """The markdown tables in ``lines``: (header cells, body rows of cells)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    previous_was_row = False
    for line in lines:
        is_row = line.startswith("|")
        if is_row and not re.fullmatch(r"[|\s:-]+", line):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if previous_was_row:
                tables[-1][1].append(cells)
            else:
                tables.append((cells, []))
        previous_was_row = is_row
    return tables


def _rows(lines: list[str], first_header: str) -> list[list[str]]:
    """Body rows of the tables in ``lines`` whose first column is ``first_header``."""
    return [row for header, rows in _tables(lines) if header[0] == first_header for row in rows]


def _key_rows(lines: list[str]) -> dict[str, list[list[str]]]:
    """Rows of the key tables (first column "Key") by their backticked key."""
    found: dict[str, list[list[str]]] = {}
    for row in _rows(lines, "Key"):
        match = re.fullmatch(r"`([A-Za-z0-9_.]+)`", row[0])
        assert match, f"a Key column cell is not one `key`: {row[0]!r}"
        found.setdefault(match.group(1), []).append(row)
    return found


def _toml_default(info: FieldInfo) -> list[str] | None:
    """How the field's default is written in the doc's Default column, or None
    when the default is not a plain value (a table or a list)."""
    default = info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return [f"`{str(default).lower()}`"]
    if isinstance(default, str | Path):
        return [f'`"{default}"`']
    if isinstance(default, int):
        return [f"`{default}`"]
    if isinstance(default, float):
        text = repr(default)
        return [f"`{text}`", f"`{text.removesuffix('.0')}`"]
    return None


def _documented_keys() -> dict[str, dict[str, list[list[str]]]]:
    lines = _doc_lines()
    return {table.header: _key_rows(_section(lines, table.header)) for table in site_tables()}


# ---- the key reference --------------------------------------------------------


def test_config_doc_has_a_section_per_table() -> None:
    lines = _doc_lines()
    missing = [table.header for table in site_tables() if not _section(lines, table.header)]
    assert not missing, f"docs/config.md has no heading for: {', '.join(missing)}"


def test_every_key_is_documented_in_its_table() -> None:
    """Each key of each model appears as `key` in a table row of its section."""
    documented = _documented_keys()
    missing = [
        f"{table.header} `{key}`"
        for table in site_tables()
        for key in table.keys()
        if key not in documented[table.header]
    ]
    assert not missing, "keys not documented in docs/config.md:\n" + "\n".join(missing)


def test_the_doc_lists_no_key_the_models_lack() -> None:
    documented = _documented_keys()
    stale = [
        f"{table.header} `{key}`"
        for table in site_tables()
        for key in documented[table.header]
        if key not in table.keys() and key not in table.sub_tables()
    ]
    assert not stale, "docs/config.md documents keys that do not exist:\n" + "\n".join(stale)


def test_defaults_and_required_keys_match_the_models() -> None:
    """The Default column (third) says "required", or shows the model's default."""
    documented = _documented_keys()
    wrong = []
    for table in site_tables():
        for key, infos in table.keys().items():
            rows = documented[table.header].get(key, [])
            if not rows:
                continue  # reported by test_every_key_is_documented_in_its_table
            defaults = [row[2] if len(row) > 2 else "" for row in rows]
            for info in infos:
                if info.is_required():
                    ok = any("required" in cell for cell in defaults)
                    want = "required"
                elif info.default is None:
                    ok = any("required" not in cell for cell in defaults)
                    want = "not required (no default)"
                else:
                    tokens = _toml_default(info)
                    if tokens is None:
                        continue
                    ok = any(token in cell for token in tokens for cell in defaults)
                    want = tokens[-1]
                if not ok:
                    wrong.append(
                        f"{table.header} `{key}`: default should be {want}, doc: {defaults}"
                    )
    assert not wrong, "stale defaults in docs/config.md:\n" + "\n".join(wrong)


def test_allowed_values_are_listed() -> None:
    """Every allowed value of a choice key (Literal) appears in the key's row."""
    documented = _documented_keys()
    missing = []
    for table in site_tables():
        for key, infos in table.keys().items():
            text = " ".join(" ".join(row) for row in documented[table.header].get(key, []))
            for info in infos:
                for value in _literal_values(info.annotation):
                    shown = f'"{value}"' if isinstance(value, str) else str(value)
                    if shown not in text:
                        missing.append(f"{table.header} `{key}`: {shown}")
    assert not missing, "allowed values missing in docs/config.md:\n" + "\n".join(missing)


def test_secret_keys_are_marked_as_secrets() -> None:
    documented = _documented_keys()
    unmarked = []
    for table in site_tables():
        for key, infos in table.keys().items():
            if any(SecretStr in _flatten(info.annotation) for info in infos):
                rows = documented[table.header].get(key, [])
                if not any(len(row) > 1 and "secret" in row[1] for row in rows):
                    unmarked.append(f"{table.header} `{key}`")
    assert not unmarked, "secret keys whose Type is not 'secret':\n" + "\n".join(unmarked)


def _flatten(annotation: Any) -> list[Any]:
    found = [annotation]
    for arg in typing.get_args(annotation):
        found += _flatten(arg)
    return found


def test_roles_and_permissions_match_gateway_auth() -> None:
    lines = _doc_lines()
    roles_section = _section(lines, "Roles")
    assert roles_section, "docs/config.md has no Roles section"
    rows = {row[0]: row for row in _rows(roles_section, "Role")}
    rows |= {row[0]: row for row in _rows(roles_section, "Permission")}
    role_names = typing.get_args(Role)
    missing_roles = [role for role in role_names if f"`{role}`" not in rows]
    assert not missing_roles, f"roles not described: {missing_roles}"
    wrong = []
    for permission, holders in PERMISSIONS.items():
        row = rows.get(f"`{permission}`")
        if row is None:
            wrong.append(f"`{permission}`: not in the permissions table")
            continue
        shown = set(re.findall(r"`([a-z]+)`", row[1])) if len(row) > 1 else set()
        if shown != set(holders):
            wrong.append(f"`{permission}`: doc says {sorted(shown)}, code {sorted(holders)}")
    stale = [
        name
        for name in rows
        if re.fullmatch(r"`[a-z]+\.[a-z_.]+`", name) and name.strip("`") not in PERMISSIONS
    ]
    wrong += [f"{name}: no such permission" for name in stale]
    assert not wrong, "permissions table out of date:\n" + "\n".join(wrong)


def test_config_doc_explains_the_commands_it_relies_on() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    for needed in ("gateway check-config", "gateway hash-token", "env:", "file:"):
        assert needed in text, needed


# ---- README ---------------------------------------------------------------------


def cli_subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise AssertionError("gateway.cli.build_parser() has no subcommands")


def test_readme_shows_every_cli_subcommand() -> None:
    """Each subcommand appears in README.md as it is typed: ``gateway <command>``."""
    commands = cli_subcommands()
    assert {"run", "check-config", "demo", "hash-token"} <= set(commands)
    assert README.is_file(), "README.md does not exist"
    text = README.read_text(encoding="utf-8")
    missing = [c for c in commands if not re.search(rf"\bgateway {re.escape(c)}(?![\w-])", text)]
    assert not missing, "README.md does not show: " + ", ".join(f"gateway {c}" for c in missing)
