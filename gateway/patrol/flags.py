"""What one scan says by itself: unknown tags, duplicates, bursts, the implausible.

Guards pad counts by re-scanning, photograph a QR code and scan it elsewhere,
or carry a wand whose clock is hours off (../shared/research/PATROL_GATES.md).
Each check here looks at a new scan against the recent ones and returns
findings with stable ids; ``alarm`` says whether the plan should raise one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from gateway.patrol.model import PatrolSettings
from gateway.patrol.rounds import Finding, Scan


def _flag(scan: Scan, reason: str, alarm: bool, where: str, **detail: object) -> Finding:
    payload: dict[str, object] = {
        "reason": reason,
        "alarm": alarm,
        "scan_id": scan.scan_id,
        "tag": scan.tag,
        "checkpoint": scan.checkpoint,
        "guard": scan.guard,
        "method": scan.method,
        "where": where,
        "scanned_at": scan.at.isoformat(),
        **detail,
    }
    return Finding(f"patrol-flag:{scan.scan_id}:{reason}", "patrol.flag", payload)


def flag_scan(
    settings: PatrolSettings,
    scan: Scan,
    before: Sequence[Scan],
    skew_s: float | None,
    on_route: bool,
) -> list[Finding]:
    """Findings for ``scan`` given the scans ``before`` it (oldest first)."""
    cp = settings.checkpoint(scan.checkpoint or "")
    where = cp.name if cp else f"未知标签 unknown tag {scan.tag}"
    found: list[Finding] = []
    if cp is None:
        return [_flag(scan, "unknown_tag", True, where)]
    if skew_s is not None and abs(skew_s) > float(settings.skew_s):
        found.append(_flag(scan, "clock_skew", False, where, skew_s=round(skew_s)))
    if not on_route:
        found.append(_flag(scan, "off_route", False, where))
    same_point = [
        b
        for b in before
        if b.checkpoint == scan.checkpoint
        and scan.at - b.at <= timedelta(seconds=float(settings.duplicate_s))
    ]
    if any(b.guard == scan.guard for b in same_point):
        found.append(_flag(scan, "duplicate", False, where))
    elif any(b.guard and scan.guard and b.guard != scan.guard for b in same_point):
        found.append(_flag(scan, "two_guards", False, where))
    who = scan.guard or scan.device
    mine = [b for b in before if (b.guard or b.device) == who]
    if mine:
        last = mine[-1]
        gap = (scan.at - last.at).total_seconds()
        fastest = _min_gap(settings, last.checkpoint, scan.checkpoint)
        if last.checkpoint != scan.checkpoint and fastest is not None and 0 <= gap < fastest:
            found.append(
                _flag(scan, "too_fast", True, where, gap_s=round(gap, 1), previous=last.checkpoint)
            )
    window = timedelta(seconds=float(settings.burst_window_s))
    burst = [b for b in mine if scan.at - b.at <= window]
    if len(burst) + 1 > settings.burst_scans:
        found.append(_flag(scan, "burst", True, where, scans_in_window=len(burst) + 1))
    return found


def _min_gap(settings: PatrolSettings, a: str | None, b: str | None) -> float | None:
    """The shortest plausible walk between two checkpoints: the smallest
    ``min_gap_s`` of the routes that have both (None: no route has both)."""
    gaps = [
        float(r.min_gap_s) for r in settings.routes if {a, b} <= {s.checkpoint for s in r.stops}
    ]
    return min(gaps) if gaps else None
