"""The meter book: every reading of every meter goes through here.

It judges readings (VEE), keeps each counter's baseline, knows which meters
still owe a period-close reading, estimates one when the boundary was missed,
and takes manual readings and meter replacements from supervisors. Each of
these is one ``Journal.write`` operation, so the reading event, the baseline
and the period-close row are committed together or not at all — after a
crash the book restarts exactly where the journal says it was.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.events import Event
from gateway.journal.store import Journal, insert_events
from gateway.meters.period import interpolate, period_closed_by
from gateway.meters.readings import CounterReading, reading_event, reading_id
from gateway.meters.vee import (
    ESTIMATED,
    GOOD,
    SUSPECT,
    Baseline,
    InvalidReading,
    check_finite,
    validate_counter,
)
from gateway.profiles import Profile, ValueSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeterInfo:
    """What the book needs to know about one configured meter."""

    id: str
    utility: str
    role: str  # billed | main
    profile: Profile
    poll_s: float


class UnknownMeter(KeyError):
    pass


class MeterBook:
    """See the module docstring. One per service; shared by pollers and the API."""

    def __init__(
        self,
        journal: Journal,
        zone: ZoneInfo,
        meters: Iterable[MeterInfo],
        *,
        close_window_s: float = 900.0,
    ) -> None:
        self.journal = journal
        self.zone = zone
        self.meters = {m.id: m for m in meters}
        self.close_window = timedelta(seconds=close_window_s)
        self._baselines: dict[tuple[str, str], Baseline] = {}
        self._owed: dict[str, dict[str, datetime]] = {}  # meter → period → boundary
        self._last_read: dict[str, datetime] = {}
        self._latest: dict[str, dict[str, Any]] = {}

    def info(self, meter: str) -> MeterInfo:
        try:
            return self.meters[meter]
        except KeyError:
            raise UnknownMeter(f"meter {meter!r} is not configured") from None

    async def load(self) -> None:
        """Restore baselines and owed period closes from the journal."""

        def read(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            baselines = conn.execute(
                "SELECT meter, register, value, read_at, replaced_with FROM meter_baseline"
            ).fetchall()
            owed = conn.execute(
                "SELECT meter, period, boundary FROM period_close WHERE status = 'owed'"
            ).fetchall()
            return baselines, owed

        baselines, owed = await self.journal.query(read)
        for meter, register, value, read_at, replaced in baselines:
            at = parse_rfc3339(read_at)
            self._baselines[(meter, register)] = Baseline(value, at, replaced)
            self._last_read[meter] = max(at, self._last_read.get(meter, at))
        for meter, period, boundary in owed:
            self._owed.setdefault(meter, {})[period] = parse_rfc3339(boundary)

    # ---- readings ---------------------------------------------------------

    async def record_poll(
        self,
        meter: str,
        read_at: datetime,
        values: Mapping[str, float],
        *,
        source: str = "modbus",
        device_time: datetime | None = None,
    ) -> Event:
        """Judge and journal one poll's decoded values; returns the event (committed)."""
        info = self.info(meter)
        read_at, stepped_back = self._after_last(meter, read_at)
        counters: list[CounterReading] = []
        instant: dict[str, float] = {}
        rejected: list[dict[str, str]] = []
        for spec in info.profile.values:
            if spec.name not in values:
                continue
            value = values[spec.name]
            try:
                if spec.counter:
                    verdict = validate_counter(
                        spec, self._baselines.get((meter, spec.name)), value, read_at
                    )
                    counters.append(
                        CounterReading(
                            spec.name,
                            float(value),
                            spec.unit,
                            SUSPECT if stepped_back else verdict.quality,
                            verdict.flags + (("clock_went_back",) if stepped_back else ()),
                            reading_id(meter, spec.name, read_at, self.zone),
                        )
                    )
                else:
                    instant[spec.name] = check_finite(spec.name, value)
            except InvalidReading as exc:
                rejected.append({"register": spec.name, "reason": str(exc)})
        extra: dict[str, Any] = {}
        if rejected:
            extra["rejected"] = rejected
        gap = self._gap(info, read_at)
        if gap is not None:
            extra["gap_before_s"] = gap
        all_good = bool(counters) and all(c.quality == GOOD for c in counters)
        closing, to_estimate = self._periods_touched(meter, read_at, all_good)
        event = reading_event(
            meter=meter,
            utility=info.utility,
            read_at=read_at,
            zone=self.zone,
            counters=counters,
            instant=instant,
            source=source,
            billing_period=closing,
            device_time=device_time,
            extra=extra,
        )
        estimates = [
            self._estimate(info, period, boundary, counters, read_at)
            for period, boundary in to_estimate
            if all_good
        ]
        good = {c.register: Baseline(c.value, read_at) for c in counters if c.quality == GOOD}

        def op(conn: sqlite3.Connection) -> None:
            insert_events(conn, [event, *(e for e, _ in estimates if e is not None)])
            self._save_baselines(conn, meter, good)
            if closing is not None:
                _close(conn, meter, closing, "read", event.id)
            for estimate, period in estimates:
                if estimate is not None:
                    _close(conn, meter, period, "estimated", estimate.id)

        await self.journal.write(op)
        self._after_commit(meter, good, read_at, event)
        if closing is not None:
            self._owed[meter].pop(closing, None)
        for estimate, period in estimates:
            if estimate is not None:
                self._owed[meter].pop(period, None)
                log.info("period close estimated meter=%s period=%s", meter, period)
        return event

    def _after_last(self, meter: str, read_at: datetime) -> tuple[datetime, bool]:
        """A poll's time, never at or before the meter's previous reading.

        After the clock steps back (NTP correcting a box that booted with a future
        time, a reset RTC) a poll would get the time — and so the ``reading_id`` —
        of an earlier one: central would answer "duplicate" and the value would be
        lost without a word. The poll is real, its time is not: it is stamped one
        second after the previous reading and marked suspect (``clock_went_back``),
        so billing never takes it on trust and nothing is lost.
        """
        last = self._last_read.get(meter)
        if last is None or read_at > last:
            return read_at, False
        log.warning(
            "meter reading time went back meter=%s read_at=%s last=%s",
            meter,
            read_at.isoformat(),
            last.isoformat(),
        )
        return last + timedelta(seconds=1), True

    def _gap(self, info: MeterInfo, read_at: datetime) -> float | None:
        last = self._last_read.get(info.id)
        if last is None:
            return None
        seconds = (read_at - last).total_seconds()
        return round(seconds) if seconds > 2.5 * info.poll_s else None

    def _periods_touched(
        self, meter: str, read_at: datetime, all_good: bool
    ) -> tuple[str | None, list[tuple[str, datetime]]]:
        """Which owed period this reading closes, and which it lets us estimate."""
        closing = None
        to_estimate = []
        for period, boundary in sorted(self._owed.get(meter, {}).items()):
            if read_at < boundary or not all_good:
                continue
            if read_at < boundary + self.close_window and closing is None:
                closing = period
            else:
                to_estimate.append((period, boundary))
        return closing, to_estimate

    def _estimate(
        self,
        info: MeterInfo,
        period: str,
        boundary: datetime,
        after: list[CounterReading],
        read_at: datetime,
    ) -> tuple[Event | None, str]:
        """A period-close estimate from the baseline before and this reading after."""
        counters = []
        before = boundary
        for reading in after:
            base = self._baselines.get((info.id, reading.register))
            if base is None or base.read_at > boundary or base.replaced_with is not None:
                return None, period
            before = min(before, base.read_at)
            spec = info.profile.value(reading.register)
            value = interpolate(
                spec, (base.read_at, base.value), (read_at, reading.value), boundary
            )
            counters.append(
                CounterReading(
                    reading.register,
                    value,
                    reading.unit,
                    ESTIMATED,
                    ("interpolated",),
                    reading_id(info.id, reading.register, boundary, self.zone),
                )
            )
        event = reading_event(
            meter=info.id,
            utility=info.utility,
            read_at=boundary,
            zone=self.zone,
            counters=counters,
            instant={},
            source="estimate",
            billing_period=period,
            received_at=read_at,
            extra={
                "estimate": {
                    "method": "linear",
                    "before": to_rfc3339(before),
                    "after": to_rfc3339(read_at),
                }
            },
        )
        return event, period

    def _save_baselines(
        self, conn: sqlite3.Connection, meter: str, good: Mapping[str, Baseline]
    ) -> None:
        conn.executemany(
            "INSERT INTO meter_baseline (meter, register, value, read_at, replaced_with) "
            "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (meter, register) DO UPDATE SET "
            "value = excluded.value, read_at = excluded.read_at, replaced_with = NULL",
            [
                (meter, reg, b.value, to_rfc3339(b.read_at.astimezone(UTC)))
                for reg, b in good.items()
            ],
        )

    def _after_commit(
        self, meter: str, good: Mapping[str, Baseline], read_at: datetime, event: Event
    ) -> None:
        for register, baseline in good.items():
            self._baselines[(meter, register)] = baseline
        self._last_read[meter] = read_at
        self._latest[meter] = dict(event.payload)

    # ---- period closes ----------------------------------------------------

    async def open_period(self, boundary: datetime, *, only_known_before: bool) -> int:
        """Make every billed meter owe a reading for the month ``boundary`` closes.

        ``only_known_before`` (used when catching up at start-up) skips meters
        the gateway never read before the boundary: nothing to estimate from,
        and no bill expected from a gateway that was not there yet.
        """
        period = period_closed_by(boundary, self.zone)
        owed = []
        for info in self.meters.values():
            if info.role != "billed":
                continue
            if only_known_before and not self._read_before(info.id, boundary):
                continue
            owed.append(info.id)
        at = to_rfc3339(boundary.astimezone(UTC))

        def op(conn: sqlite3.Connection) -> list[str]:
            opened = []
            for meter in owed:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO period_close (meter, period, boundary, status) "
                    "VALUES (?, ?, ?, 'owed')",
                    (meter, period, at),
                )
                if cursor.rowcount:
                    opened.append(meter)
            return opened

        opened = await self.journal.write(op)
        for meter in opened:
            self._owed.setdefault(meter, {})[period] = boundary
        if opened:
            log.info("period opened period=%s meters_owing=%d", period, len(opened))
        return len(opened)

    def _read_before(self, meter: str, boundary: datetime) -> bool:
        return any(b.read_at < boundary for (m, _), b in self._baselines.items() if m == meter)

    def owed(self) -> dict[str, list[str]]:
        """Meter → periods whose close reading is still owed."""
        return {m: sorted(p) for m, p in self._owed.items() if p}

    def latest(self, meter: str) -> dict[str, Any] | None:
        """The last reading event's payload of a meter (this run), for screens."""
        return self._latest.get(meter)

    # ---- supervisor entries -------------------------------------------------

    async def enter_manual(
        self,
        meter: str,
        register: str,
        value: float,
        read_at: datetime,
        *,
        entered_by: str,
        reason: str,
        photo_ref: str | None,
    ) -> Event:
        """A supervisor's reading of a broken meter (``source: manual``)."""
        info = self.info(meter)
        spec = _counter(info, register)
        check_finite(register, value)
        verdict = validate_counter(spec, self._baselines.get((meter, register)), value, read_at)
        flags = (*verdict.flags, "manual")
        counter = CounterReading(
            register,
            value,
            spec.unit,
            verdict.quality,
            flags,
            reading_id(meter, register, read_at, self.zone),
        )
        closing, _ = self._periods_touched(meter, read_at, verdict.quality == GOOD)
        event = reading_event(
            meter=meter,
            utility=info.utility,
            read_at=read_at,
            zone=self.zone,
            counters=[counter],
            instant={},
            source="manual",
            billing_period=closing,
            extra={"entered_by": entered_by, "reason": reason, "photo_ref": photo_ref},
        )
        good = {register: Baseline(value, read_at)} if verdict.quality == GOOD else {}

        def op(conn: sqlite3.Connection) -> None:
            insert_events(conn, [event])
            self._save_baselines(conn, meter, good)
            if closing is not None:
                _close(conn, meter, closing, "manual", event.id)

        await self.journal.write(op)
        self._after_commit(meter, good, read_at, event)
        if closing is not None:
            self._owed[meter].pop(closing, None)
        return event

    async def enter_replacement(
        self,
        meter: str,
        register: str,
        old_final: float,
        new_initial: float,
        at: datetime,
        *,
        entered_by: str,
        reason: str,
    ) -> Event:
        """A meter swapped for a new one: the next reading starts from ``new_initial``."""
        info = self.info(meter)
        _counter(info, register)
        check_finite(register, old_final)
        check_finite(register, new_initial)
        event = Event(
            "meter.replacement",
            meter,
            {
                "register": register,
                "old_final": old_final,
                "new_initial": new_initial,
                "at": to_rfc3339(at.astimezone(self.zone)),
                "entered_by": entered_by,
                "reason": reason,
            },
            received_at=at,
        )
        baseline = Baseline(old_final, at, replaced_with=new_initial)

        def op(conn: sqlite3.Connection) -> None:
            insert_events(conn, [event])
            conn.execute(
                "INSERT INTO meter_baseline (meter, register, value, read_at, replaced_with) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (meter, register) DO UPDATE SET "
                "value = excluded.value, read_at = excluded.read_at, "
                "replaced_with = excluded.replaced_with",
                (meter, register, old_final, to_rfc3339(at.astimezone(UTC)), new_initial),
            )

        await self.journal.write(op)
        self._baselines[(meter, register)] = baseline
        return event


def _counter(info: MeterInfo, register: str) -> ValueSpec:
    try:
        spec = info.profile.value(register)
    except KeyError:
        raise UnknownMeter(f"meter {info.id} has no register {register!r}") from None
    if not spec.counter:
        raise UnknownMeter(f"register {register!r} of meter {info.id} is not a counter")
    return spec


def _close(conn: sqlite3.Connection, meter: str, period: str, status: str, event_id: str) -> None:
    conn.execute(
        "UPDATE period_close SET status = ?, event_id = ? WHERE meter = ? AND period = ? "
        "AND status = 'owed'",
        (status, event_id, meter, period),
    )
