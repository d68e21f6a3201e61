"""Rounds from schedules, and what a round's scans say about it.

Pure functions of (configuration, scans, now): the same inputs always give
the same findings with the same ids, so the tracker can re-evaluate after a
restart and the journal stores each finding once (its id is already there).

A round of a schedule starts every ``every_min`` from ``start`` while before
``end`` (site time; a window may cross midnight). A stop is due at the round's
start plus its ``offset_min``, give or take ``deviation_min``. A round is
judged once its last stop's window has closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.patrol.model import PatrolSettings, Route, Schedule


@dataclass(frozen=True)
class Round:
    id: str
    schedule: str
    route: Route
    start: datetime  # aware

    def due(self, checkpoint: str) -> datetime:
        stop = next(s for s in self.route.stops if s.checkpoint == checkpoint)
        return self.start + timedelta(minutes=float(stop.offset_min))

    @property
    def closes(self) -> datetime:
        """When the last stop's window has passed: the round can be judged."""
        return max(
            self.start + timedelta(minutes=float(s.offset_min) + float(s.deviation_min))
            for s in self.route.stops
        )


@dataclass(frozen=True)
class Scan:
    """A scan the tracker counts (after tag → checkpoint resolution)."""

    scan_id: str
    checkpoint: str | None
    tag: str
    guard: str | None
    method: str
    at: datetime  # the time the tracker believes: device time unless skewed
    received_at: datetime
    device: str | None


@dataclass(frozen=True)
class Finding:
    """Something the tracker concluded; ``kind`` is the journal event kind."""

    id: str
    kind: str
    payload: dict[str, object]


def rounds_between(
    settings: PatrolSettings, zone: ZoneInfo, since: datetime, until: datetime
) -> list[Round]:
    """Every scheduled round starting in [since, until)."""
    routes = {r.id: r for r in settings.routes}
    out: list[Round] = []
    first = since.astimezone(zone).date() - timedelta(days=1)
    last = until.astimezone(zone).date()
    for schedule in settings.schedules:
        day = first
        while day <= last:
            for start in _starts(schedule, day, zone):
                if since <= start < until:
                    stamp = start.astimezone(zone).strftime("%Y%m%dT%H%M")
                    out.append(
                        Round(f"{schedule.id}@{stamp}", schedule.id, routes[schedule.route], start)
                    )
            day += timedelta(days=1)
    return sorted(out, key=lambda r: r.start)


def _starts(schedule: Schedule, day: date, zone: ZoneInfo) -> Iterable[datetime]:
    """Round starts of the window that opens on ``day`` (site time)."""
    begin = datetime.combine(day, time.fromisoformat(schedule.start), zone)
    end = datetime.combine(day, time.fromisoformat(schedule.end), zone)
    if end <= begin:  # across midnight: 22:00–06:00
        end += timedelta(days=1)
    step = timedelta(minutes=float(schedule.every_min))
    moment = begin
    while moment < end:
        yield moment
        moment += step


def judge(settings: PatrolSettings, rnd: Round, scans: Sequence[Scan]) -> list[Finding]:
    """Findings for a round once it has closed: not started, missed, late, early,
    out of order, and the round's completion."""
    schedule = next(s for s in settings.schedules if s.id == rnd.schedule)
    window = timedelta(minutes=float(schedule.start_window_min))
    stops = {s.checkpoint: s for s in rnd.route.stops}
    earliest = (
        rnd.start
        - window
        - max((timedelta(minutes=float(s.deviation_min)) for s in rnd.route.stops), default=window)
    )
    # Scans up to the judgement count: the last stop can be late, not only missed.
    latest = rnd.closes + timedelta(minutes=float(settings.judge_after_min))
    mine = [s for s in scans if s.checkpoint in stops and earliest <= s.at <= latest]
    first: dict[str, Scan] = {}
    for scan in sorted(mine, key=lambda s: s.at):
        first.setdefault(scan.checkpoint or "", scan)
    base: dict[str, object] = {
        "round": rnd.id,
        "schedule": rnd.schedule,
        "route": rnd.route.id,
        "planned_start": rnd.start.isoformat(),
    }
    findings: list[Finding] = []
    if not first:
        return [Finding(f"patrol:{rnd.id}:not_started", "patrol.round_not_started", base)]
    for checkpoint, stop in stops.items():
        due = rnd.due(checkpoint)
        deviation = timedelta(minutes=float(stop.deviation_min))
        found = first.get(checkpoint)
        detail: dict[str, object] = {**base, "checkpoint": checkpoint, "due": due.isoformat()}
        if found is None:
            findings.append(
                Finding(f"patrol:{rnd.id}:{checkpoint}:missed", "patrol.checkpoint_missed", detail)
            )
            continue
        detail |= {
            "scanned_at": found.at.isoformat(),
            "guard": found.guard,
            "scan_id": found.scan_id,
        }
        if found.at > due + deviation:
            minutes = round((found.at - due).total_seconds() / 60, 1)
            findings.append(
                Finding(
                    f"patrol:{rnd.id}:{checkpoint}:late",
                    "patrol.checkpoint_late",
                    {**detail, "late_min": minutes},
                )
            )
        elif found.at < due - deviation:
            minutes = round((due - found.at).total_seconds() / 60, 1)
            findings.append(
                Finding(
                    f"patrol:{rnd.id}:{checkpoint}:early",
                    "patrol.checkpoint_early",
                    {**detail, "early_min": minutes},
                )
            )
    if rnd.route.order == "strict":
        planned = [s.checkpoint for s in rnd.route.stops if s.checkpoint in first]
        walked = [c for c in sorted(first, key=lambda c: first[c].at)]
        if walked != planned:
            findings.append(
                Finding(
                    f"patrol:{rnd.id}:out_of_order",
                    "patrol.out_of_order",
                    {**base, "planned": planned, "walked": walked},
                )
            )
    completion = round(100 * len(first) / len(stops), 1)
    guards = sorted({s.guard for s in first.values() if s.guard})
    findings.append(
        Finding(
            f"patrol:{rnd.id}:finished",
            "patrol.round_finished",
            {
                **base,
                "completion_pct": completion,
                "scanned": sorted(first),
                "missed": sorted(set(stops) - set(first)),
                "guards": guards,
                "escalate": completion < float(settings.escalate_below_pct),
            },
        )
    )
    return findings
