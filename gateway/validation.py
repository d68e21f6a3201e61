"""One pydantic error → one line a site engineer can act on.

Shared by the site file (gateway.config) and device profiles
(gateway.profiles), so both say "file: key.path: value reason" the same way.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError


def format_loc(loc: Iterable[int | str]) -> str:
    """``('devices', 'meters', 3, 'unit_id')`` → ``devices.meters[3].unit_id``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def format_value(value: Any) -> str:
    """A value as the TOML file spells it (strings quoted, true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


def describe_error(error: Any, where: str, *, keys_hint: str, hide_value: bool = False) -> str:
    """The line for one pydantic error at key path ``where``.

    Our own validators phrase their reason to follow the value
    ("300 is not a Modbus unit id (1–247)"); pydantic's own messages follow a
    colon. ``hide_value`` keeps secrets (and pasted tokens) out of the line.
    """
    kind = error["type"]
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown key ({keys_hint})"
    value = error.get("input")
    shown = "<secret>" if hide_value else format_value(value)
    message = str(error["msg"])
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        if hide_value or isinstance(value, dict):  # the message says what is wrong
            return f"{where}: {message}"
        return f"{where}: {shown} {message}"
    return f"{where}: {shown}: {message[:1].lower()}{message[1:]}"


def parse_toml(text: str, name: str) -> dict[str, Any]:
    """TOML text as data, or ConfigError naming the file and where the syntax broke."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: {exc}"]) from None


def read_config_text(path: Path, what: str = "") -> str:
    """A configuration file's text (site file, plan, profile), or a ConfigError
    naming the file and what is wrong; ``what`` says which file it was meant to be."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file{what}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text; save it as UTF-8"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
