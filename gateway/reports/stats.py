"""The statistics the seeds ask the guard room for, from the reports themselves.

Per week, how many reports of each category; per month, per urgency, how
many met their on-scene commitment (对客服务承诺), how long it took on
average, and what share of the follow-up calls owed (回访, 100 % of
complaints) were made. Everything is counted in the site's time zone: a
report at 23:50 on the 31st belongs to that month.

A report counts for the on-time rate once it can be judged: someone reached
the scene (or it was resolved), or its commitment has passed without that.
A report still inside its commitment is not yet on time nor late.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import parse_rfc3339
from gateway.reports.model import URGENCIES, Report


def month_window(month: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a month ('2026-11') in site time, as UTC (ValueError if malformed)."""
    year, mon = (int(p) for p in month.split("-"))
    start = datetime(year, mon, 1, tzinfo=zone)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def reached_at(report: Report) -> datetime | None:
    """When someone was first on scene (or it was resolved without a visit)."""
    stamp = report.on_scene_at or report.resolved_at
    return parse_rfc3339(stamp) if stamp else None


def on_time(report: Report, now: datetime) -> bool | None:
    """True/False once the commitment can be judged; None while it is still running
    (or for a cancelled report, which is not counted)."""
    if report.state == "cancelled":
        return None
    due = parse_rfc3339(report.respond_by)
    reached = reached_at(report)
    if reached is not None:
        return reached <= due
    return False if now > due else None


def follow_up_owed(report: Report) -> bool:
    """A call back is owed once the work is done, for the categories that require it."""
    return report.follow_up_required and (
        report.state in ("resolved", "closed") or report.follow_up_at is not None
    )


def follow_up_made(report: Report) -> bool:
    """The resident was reached (satisfied, or unsatisfied and the report reopened)."""
    return report.follow_up_at is not None and report.follow_up_result != "unreachable"


def monthly_summary(reports: Iterable[Report], month: str, now: datetime) -> dict[str, Any]:
    """Per urgency: reports, judged, on time, on-time %, average minutes to scene;
    and the follow-up rate over the categories that require it."""
    taken = list(reports)
    rows = []
    for urgency in URGENCIES:
        mine = [r for r in taken if r.urgency == urgency]
        judged = [v for r in mine if (v := on_time(r, now)) is not None]
        minutes = [
            (reached - parse_rfc3339(r.created_at)).total_seconds() / 60
            for r in mine
            if r.state != "cancelled" and (reached := reached_at(r)) is not None
        ]
        rows.append(
            {
                "urgency": urgency,
                "reports": len(mine),
                "judged": len(judged),
                "on_time": sum(judged),
                "on_time_pct": _pct(sum(judged), len(judged)),
                "avg_min_to_scene": round(sum(minutes) / len(minutes), 1) if minutes else None,
            }
        )
    owed = [r for r in taken if follow_up_owed(r)]
    made = sum(1 for r in owed if follow_up_made(r))
    return {
        "month": month,
        "reports": len(taken),
        "by_urgency": rows,
        "follow_up": {"owed": len(owed), "made": made, "pct": _pct(made, len(owed))},
        "by_category": dict(Counter(r.category for r in taken)),
    }


def weekly_by_category(reports: Iterable[Report], zone: ZoneInfo) -> list[dict[str, Any]]:
    """Reports per week (starting Monday, site time) and category, oldest week first."""
    counts: Counter[tuple[str, str]] = Counter()
    for report in reports:
        local = parse_rfc3339(report.created_at).astimezone(zone).date()
        monday = local - timedelta(days=local.weekday())
        counts[(monday.isoformat(), report.category)] += 1
    return [
        {"week": week, "category": category, "reports": n}
        for (week, category), n in sorted(counts.items())
    ]


def _pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None
