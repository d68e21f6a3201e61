"""Validation of cumulative meter readings (the V of VEE: validate, estimate, edit).

A reading is billing evidence, so it is never silently corrected: it is kept
as read and marked ``good`` or ``suspect`` with the reason in ``flags``.
Rules for a cumulative counter (energy kWh, volume m³):

* NaN or infinity is not a reading at all (``InvalidReading``);
* a decrease is ``suspect`` ("decreased") unless it is a rollover at the
  profile's ``rollover_at`` or follows a meter replacement a supervisor entered;
* an increase faster than the profile's ``max_rate_per_h`` is ``suspect``
  ("rate_exceeded");
* the baseline for the next reading is the last *good* one, so one bad value
  does not poison the readings after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from gateway.profiles import ValueSpec

GOOD = "good"
SUSPECT = "suspect"
ESTIMATED = "estimated"


class InvalidReading(ValueError):
    """The decoded value cannot be a reading (NaN, infinity)."""


@dataclass(frozen=True)
class Baseline:
    """The last good value of one counter, and a pending replacement if any."""

    value: float
    read_at: datetime
    replaced_with: float | None = None  # the new meter's initial reading


@dataclass(frozen=True)
class Verdict:
    quality: str
    flags: tuple[str, ...] = ()


def check_finite(name: str, value: float) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidReading(f"{name}: {value} is not a number a meter can show")
    return value


def validate_counter(
    spec: ValueSpec, baseline: Baseline | None, value: float, read_at: datetime
) -> Verdict:
    """Judge one counter reading against the last good one."""
    check_finite(spec.name, value)
    if baseline is None:
        return Verdict(GOOD)
    if baseline.replaced_with is not None:
        if value >= baseline.replaced_with:
            return Verdict(GOOD, ("meter_replaced",))
        return Verdict(SUSPECT, ("meter_replaced", "decreased"))
    hours = max((read_at - baseline.read_at).total_seconds() / 3600, 1 / 60)
    if value < baseline.value:
        if _is_rollover(spec, baseline.value, value):
            increase = spec.rollover_at - baseline.value + value  # type: ignore[operator]
            if spec.max_rate_per_h is not None and increase > spec.max_rate_per_h * hours:
                return Verdict(SUSPECT, ("rollover", "rate_exceeded"))
            return Verdict(GOOD, ("rollover",))
        return Verdict(SUSPECT, ("decreased",))
    if spec.max_rate_per_h is not None and value - baseline.value > spec.max_rate_per_h * hours:
        return Verdict(SUSPECT, ("rate_exceeded",))
    return Verdict(GOOD)


def _is_rollover(spec: ValueSpec, before: float, after: float) -> bool:
    """A wrap: the old value near the top of the counter, the new one near zero."""
    top = spec.rollover_at
    return top is not None and before >= 0.9 * top and after <= 0.1 * top


def consumption(spec: ValueSpec, earlier: float, later: float) -> float:
    """Consumption between two good readings, across a rollover if there was one."""
    if later < earlier and spec.rollover_at is not None and _is_rollover(spec, earlier, later):
        return spec.rollover_at - earlier + later
    return later - earlier
