"""Billing periods: the month boundary in site time, and linear estimates.

Billing prints each home's bill from the reading at 00:00 site time on the 1st
(../shared/DOMAIN.md). ``boundary_at`` and ``period_closed_by`` turn a moment
into that boundary and the month it closes; ``interpolate`` estimates the
counter at the boundary when the meter could not be read then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.meters.vee import consumption
from gateway.profiles import ValueSpec


def last_boundary(now: datetime, zone: ZoneInfo) -> datetime:
    """00:00 site time on the 1st of the current month, as UTC."""
    local = now.astimezone(zone)
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return first.astimezone(UTC)


def next_boundary(now: datetime, zone: ZoneInfo) -> datetime:
    """00:00 site time on the 1st of next month, as UTC."""
    local = last_boundary(now, zone).astimezone(zone)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return local.replace(year=year, month=month).astimezone(UTC)


def period_closed_by(boundary: datetime, zone: ZoneInfo) -> str:
    """The month a boundary closes: 2026-12-01 00:00 closes '2026-11'."""
    return (boundary.astimezone(zone) - timedelta(days=1)).strftime("%Y-%m")


def interpolate(
    spec: ValueSpec,
    before: tuple[datetime, float],
    after: tuple[datetime, float],
    at: datetime,
) -> float:
    """The counter at ``at``, on the straight line between two good readings.

    Consumption is spread evenly over the gap (across a rollover if one
    happened); the result is rounded to the meter's 0.01 resolution so the
    estimate does not claim more precision than a reading has.
    """
    (t0, v0), (t1, v1) = before, after
    span = (t1 - t0).total_seconds()
    if span <= 0 or not t0 <= at <= t1:
        raise ValueError("the boundary must lie between the two readings")
    value = v0 + consumption(spec, v0, v1) * (at - t0).total_seconds() / span
    if spec.rollover_at is not None and value >= spec.rollover_at:
        value -= spec.rollover_at
    return round(value, 2)
