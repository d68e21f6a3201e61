"""What the central API accepts, item by item (../shared/contracts/central-api.md).

The receiver is the gateway's reference peer, so it is strict: a field the
contract does not name, a timestamp without an offset or a number sent as a
string rejects the item with an error that says which field and why. The
gateway's tests then catch any drift from the contract instead of the real
central office catching it in production.

Items are validated as ``TypedDict`` lists in one pydantic call per batch
(strict mode, no model objects): that keeps the meter-readings path at a few
milliseconds per 1,000 items. The handlers store the items exactly as
received; validation only decides which of them are acceptable.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

MAX_ITEMS = 1000
MAX_BODY_BYTES = 1024 * 1024

# RFC 3339 with an offset, fields in range; the calendar (no 30 February) is
# left to ``datetime.fromisoformat``. The pattern runs inside pydantic-core.
RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
PERIOD_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


def _real_date(value: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a real date") from None
    return value


Timestamp = Annotated[str, Field(pattern=RFC3339_PATTERN), AfterValidator(_real_date)]
Id = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=0)]

_STRICT = ConfigDict(extra="forbid", strict=True)


@with_config(_STRICT)
class ReadingItem(TypedDict):
    """One meter reading; ``billing_period`` and ``flags`` may be left out (null, [])."""

    reading_id: Id
    meter_id: Id
    utility: Literal["electricity", "water", "gas", "heat"]
    register: Id
    value: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    unit: Id
    read_at: Timestamp
    quality: Literal["good", "estimated", "suspect"]
    source: Literal["modbus", "mqtt", "serial", "manual"]
    billing_period: NotRequired[Annotated[str, Field(pattern=PERIOD_PATTERN)] | None]
    flags: NotRequired[list[Id]]


@with_config(_STRICT)
class TimelineEntry(TypedDict):
    at: Timestamp
    what: Text
    by: Text


@with_config(_STRICT)
class IncidentItem(TypedDict):
    """One incident revision; who handles it and where may still be unknown (null)."""

    incident_id: Id
    revision: Count
    type: Id
    priority: Literal["P1", "P2", "P3"]
    title: Text
    location: NotRequired[str | None]
    state: Literal["open", "acknowledged", "resolved", "closed"]
    opened_at: Timestamp
    respond_by: NotRequired[Timestamp | None]
    updated_at: Timestamp
    handler: NotRequired[Id | None]
    supervisor: NotRequired[Id | None]
    timeline: list[TimelineEntry]


@with_config(_STRICT)
class Heartbeat(TypedDict):
    at: Timestamp
    version: Text
    backlog: dict[str, Count]
    devices: dict[str, Count]


@with_config(_STRICT)
class TicketUpdateIn(TypedDict):
    """A central-side change to a ticket, injected by a test or an operator."""

    incident_id: NotRequired[Id]
    ticket_no: NotRequired[Id]
    state: Id
    note: NotRequired[str]
    at: NotRequired[Timestamp]


@with_config(_STRICT)
class OutageNoticeIn(TypedDict):
    """A planned utility cut, injected by a test or an operator."""

    notice_id: NotRequired[Id]
    utility: Literal["electricity", "water", "gas", "heat"]
    scope: Annotated[list[Id], Field(min_length=1)]
    starts_at: Timestamp
    ends_at: Timestamp
    reason: Text


@with_config(ConfigDict(extra="forbid", strict=True))
class FaultsIn(TypedDict, total=False):
    """A partial change of the receiver's faults (``POST /_sim/faults``)."""

    error_rate: Annotated[float, Field(ge=0, le=1)]
    throttle_rate: Annotated[float, Field(ge=0, le=1)]
    retry_after_s: Annotated[int, Field(ge=0)]
    delay_s: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    reset_after_store_rate: Annotated[float, Field(ge=0, le=1)]
    silent: bool
    unauthorized: bool
    seed: int
    down_for_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    clear: bool


READINGS = TypeAdapter(list[ReadingItem])
INCIDENTS = TypeAdapter(list[IncidentItem])
HEARTBEAT = TypeAdapter(Heartbeat)
TICKET_UPDATE = TypeAdapter(TicketUpdateIn)
OUTAGE_NOTICE = TypeAdapter(OutageNoticeIn)
FAULTS = TypeAdapter(FaultsIn)

# Short wording for the errors a gateway is most likely to cause.
_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a field of the contract",
    "finite_number": "must be a finite number",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "dict_type": "must be a JSON object",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
}
_PATTERN_MESSAGES = {
    RFC3339_PATTERN: "must be an RFC 3339 timestamp with an offset (2026-11-23T08:00:00+08:00)",
    PERIOD_PATTERN: "must be YYYY-MM",
}


def describe(error: Any, skip: int = 0) -> str:
    """One pydantic error as ``field message`` (``value must be >= 0``)."""
    loc = ".".join(str(part) for part in error["loc"][skip:])
    template = _MESSAGES.get(error["type"])
    if template is not None:
        limits = {
            k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()
        }
        message = template.format(**limits)
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        if message.startswith("Input should be"):
            message = "must be" + message.removeprefix("Input should be")
    if error["type"] == "string_pattern_mismatch":
        message = _PATTERN_MESSAGES.get(error["ctx"]["pattern"], "has the wrong format")
    return f"{loc} {message}" if loc else f"item {message}"


def item_errors(adapter: TypeAdapter[Any], items: list[Any]) -> dict[int, str]:
    """Validate a whole list at once; the error of each bad item by its index."""
    try:
        adapter.validate_python(items)
    except ValidationError as exc:
        found: dict[int, list[str]] = {}
        for error in exc.errors():
            index = error["loc"][0]
            if isinstance(index, int):
                found.setdefault(index, []).append(describe(error, skip=1))
        return {index: "; ".join(messages) for index, messages in found.items()}
    return {}


def body_error(adapter: TypeAdapter[Any], body: Any) -> str | None:
    """Why a whole body is not acceptable (``None`` if it is)."""
    try:
        adapter.validate_python(body)
    except ValidationError as exc:
        return "; ".join(describe(error) for error in exc.errors())
    return None


def check_ticket_update(fields: dict[str, Any]) -> None:
    """ValueError unless ``fields`` is a valid injected ticket update."""
    error = body_error(TICKET_UPDATE, fields)
    if error is None and ("incident_id" in fields) == ("ticket_no" in fields):
        error = "give exactly one of incident_id and ticket_no"
    if error is not None:
        raise ValueError(error)


def complete_outage_notice(fields: dict[str, Any]) -> dict[str, Any]:
    """A valid injected outage notice, with a generated ``notice_id`` if none was
    given; ValueError otherwise."""
    error = body_error(OUTAGE_NOTICE, fields)
    if error is None and datetime.fromisoformat(fields["ends_at"]) <= datetime.fromisoformat(
        fields["starts_at"]
    ):
        error = "ends_at must be after starts_at"
    if error is not None:
        raise ValueError(error)
    return {"notice_id": f"n-{uuid.uuid4().hex}", **fields}
