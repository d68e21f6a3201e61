"""Time: store UTC, show and bill in the site's time zone.

Everything stored is an aware UTC datetime rendered as RFC 3339; conversion to
the site's zone happens only at the edges (screens, billing periods, the
central API, which wants an offset).
"""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


def utc_now() -> datetime:
    """Current time as an aware UTC datetime."""
    return datetime.now(UTC)


def to_rfc3339(moment: datetime) -> str:
    """Render an aware datetime as RFC 3339 with millisecond precision.

    Naive datetimes are refused: a device time without a zone is ambiguous and
    must be localised by the adapter that knows the device.
    """
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: attach the device's time zone first")
    return moment.isoformat(timespec="milliseconds")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; it must carry an offset (``Z`` or ``+08:00``)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment


def in_site_zone(moment: datetime, zone: ZoneInfo) -> datetime:
    """The same instant in the site's time zone (for screens and billing)."""
    return moment.astimezone(zone)
