"""How the reference receiver misbehaves, so the gateway's sync meets real faults.

Two layers share one ``FaultPlan``:

* the ASGI app answers 500 (``error_rate``), 429 with ``Retry-After``
  (``throttle_rate``), slowly (``delay_s``) or 401 to everything
  (``unauthorized``), and marks a stored POST for a reset
  (``reset_after_store_rate``) with the ``X-Sim-Reset`` response header;
* the TCP proxy in front of it (``proxy.py``) does what an ASGI app cannot:
  resets the client's connection instead of forwarding a marked response,
  swallows requests without ever answering (``silent``) and refuses
  connections for a while (``down_for``).

Random choices come from one ``random.Random(seed)``, so a test that sends the
same requests sees the same faults every run.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

RESET_HEADER = "x-sim-reset"
"""Response header by which the app asks the proxy to reset instead of answering."""
DOWN_HEADER = "x-sim-down"
"""Response header by which the app asks the proxy to go down for N seconds after answering."""


@dataclass
class Faults:
    """The receiver's misbehaviour; all off by default.

    Fields may be assigned at run time (the next request sees them); use
    ``CentralReceiver.set_faults`` to have the values checked.
    """

    error_rate: float = 0.0
    """Fraction of API requests answered 500 without storing anything."""
    throttle_rate: float = 0.0
    """Fraction of API requests answered 429 with ``Retry-After: retry_after_s``."""
    retry_after_s: int = 1
    delay_s: float = 0.0
    """Every API request waits this long before it is handled."""
    reset_after_store_rate: float = 0.0
    """Fraction of successful POSTs that are stored, then the connection is reset."""
    silent: bool = False
    """Requests are read and never answered; the connection stays open."""
    unauthorized: bool = False
    """Every API request is answered 401, as if the site's token were revoked."""
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first value out of range."""
        for name in ("error_rate", "throttle_rate", "reset_after_store_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate!r}")
        if self.error_rate + self.throttle_rate > 1.0:
            raise ValueError("error_rate + throttle_rate must not exceed 1")
        if not math.isfinite(self.delay_s) or self.delay_s < 0:
            raise ValueError(f"delay_s must be a finite number >= 0, got {self.delay_s!r}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def active(self) -> dict[str, Any]:
        """The fields that differ from "no faults" (the seed aside)."""
        calm = Faults().as_dict()
        return {k: v for k, v in self.as_dict().items() if k != "seed" and v != calm[k]}


class FaultPlan:
    """The live faults plus the seeded random source the app draws from.

    Only the receiver's event loop draws; other threads replace ``faults`` or
    assign its fields, which is atomic enough for a test tool.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults if faults is not None else Faults()
        self.faults.check()
        self._rng = random.Random(self.faults.seed)  # noqa: S311 (reproducible, not secret)

    def update(self, changes: dict[str, Any], *, clear: bool = False) -> Faults:
        """Apply a partial change (after ``clear``: to "no faults"), checked first.

        The live ``faults`` object is changed in place, so a reference a test
        holds stays current; a new ``seed`` restarts the draws.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(Faults)}
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        base = Faults(seed=self.faults.seed) if clear else self.faults
        new = dataclasses.replace(base, **changes)
        new.check()
        for f in dataclasses.fields(Faults):
            setattr(self.faults, f.name, getattr(new, f.name))
        if "seed" in changes:
            self._rng = random.Random(new.seed)  # noqa: S311 (reproducible, not secret)
        return self.faults

    def clear(self) -> Faults:
        """Switch every fault off (the seed is kept)."""
        return self.update({}, clear=True)

    def draw_refusal(self) -> int | None:
        """500, 429 or None (handle normally) for the next API request."""
        faults = self.faults
        if faults.error_rate <= 0 and faults.throttle_rate <= 0:
            return None
        draw = self._rng.random()
        if draw < faults.error_rate:
            return 500
        if draw < faults.error_rate + faults.throttle_rate:
            return 429
        return None

    def draw_reset(self) -> bool:
        """Whether a stored POST's connection is reset instead of answered."""
        rate = self.faults.reset_after_store_rate
        return rate > 0 and self._rng.random() < rate
