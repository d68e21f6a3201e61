"""Time: store UTC, show and bill in the site's time zone.

Everything stored is an aware UTC datetime rendered as RFC 3339; conversion to
the site's zone happens only at the edges (screens, billing periods, the
central API, which wants an offset).
"""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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


class Clock:
    """The wall clock the schedulers read; tests substitute a ``ShiftedClock``.

    Billing-period closes happen at 00:00 site time on the 1st; a test must be
    able to cross that boundary in seconds, not wait for the end of the month.
    """

    def now(self) -> datetime:
        return utc_now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ShiftedClock(Clock):
    """Real time moved to begin at ``start``, optionally running ``speed`` times faster."""

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("ShiftedClock needs an aware start time")
        self._start = start.astimezone(UTC)
        self._t0 = time.monotonic()
        self._speed = speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)

    def jump(self, by: timedelta) -> None:
        """Move the clock (forward, or back: a clock step) at once, for tests."""
        self._start += by


class StepWatch:
    """Notices the wall clock being stepped (set back or forward), as opposed to running.

    Wall time minus monotonic time stays put while the clock runs (NTP slews it by
    milliseconds); a step changes it at once. Readings, patrol rounds and billing
    boundaries all hang on the wall clock, so a step is journalled and alarmed.
    """

    def __init__(
        self,
        threshold_s: float = 2.0,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold_s = threshold_s
        self._wall = wall
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def step(self) -> float | None:
        """Seconds the clock was stepped since the last call (negative: back), or None."""
        offset = self._wall() - self._monotonic()
        delta, self._offset = offset - self._offset, offset
        return delta if abs(delta) >= self.threshold_s else None
