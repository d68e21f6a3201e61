"""Building blocks of the configuration models: strict sections, ids, secrets.

Shared by the site file (gateway.config) and the sections that live with the
part they configure (e.g. gateway.patrol.model), so every file reports
problems the same way and resolves ``env:``/``file:`` secrets the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from gateway.secrets import resolve_secret

Role = Literal["guard", "supervisor", "admin", "central"]
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _identifier(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError("is not a valid id (letters, digits, '_', '.', '-'; at most 64)")
    return value


def _unit_id(value: int) -> int:
    if not 1 <= value <= 247:
        raise ValueError("is not a Modbus unit id (1–247)")
    return value


def _tcp_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("is not a TCP port (0–65535)")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _meter_poll(value: float) -> float:
    if value < 1.0:
        # a reading's id carries its time to the second (the central API's form)
        raise ValueError("is too short: a meter is read at most once a second (poll_s >= 1)")
    return value


def _sha256_hex(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(
            "is not a SHA-256 hex digest (64 lower-case hex digits; "
            "make one with `gateway hash-token`)"
        )
    return value


Ident = Annotated[str, AfterValidator(_identifier)]
# Strict numbers and booleans: TOML has types, so "1883" or true where a number
# belongs is a mistake to report, not to coerce.
UnitId = Annotated[StrictInt, AfterValidator(_unit_id)]
TcpPort = Annotated[StrictInt, AfterValidator(_tcp_port)]
Seconds = Annotated[StrictFloat, AfterValidator(_positive)]
TokenHash = Annotated[str, AfterValidator(_sha256_hex)]
MeterPoll = Annotated[StrictFloat, AfterValidator(_meter_poll)]


class _Section(BaseModel):
    """Strict base: unknown keys are errors, values are immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    base = context.get("base_dir", Path.cwd())
    assert isinstance(base, Path)
    return base


class _HasSecrets(_Section):
    """Sections with secret fields resolve ``env:``/``file:`` references on load."""

    @field_validator("password", "token", "signing_secret", mode="before", check_fields=False)
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            return resolve_secret(value, _base_dir(info))
        return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    return value if value.is_absolute() else _base_dir(info) / value
