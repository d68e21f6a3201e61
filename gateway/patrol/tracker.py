"""The patrol tracker: scans in, findings (patrol events) out, for the alarm engine.

It tails the journal for scans — ``patrol.scan`` from wands, readers and the
phone page, and ``access.granted``/``access.denied`` where a guard's patrol
card was swiped at a checkpoint's door reader — and writes what it concludes
as journal events: per-scan flags at once, each round's findings once it has
closed. Findings have stable ids, so evaluating again (every few seconds, or
after a restart) stores nothing twice; the alarm engine raises the plan's
patrol alarms from them (../shared/DESIGN.md: parts meet through events).

A scan's time is the device's time corrected by the clock skew measured at
upload (a wand 14 h off still places its scans right); the skew is flagged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import Clock, parse_rfc3339, to_rfc3339
from gateway.events import Event
from gateway.journal.store import Journal, insert_events
from gateway.patrol.flags import flag_scan
from gateway.patrol.model import PatrolSettings
from gateway.patrol.rounds import Finding, Round, Scan, judge, rounds_between
from gateway.supervisor import PartFactory
from gateway.sync.central_state import get_cursor, set_cursor

log = logging.getLogger(__name__)

SCAN_KINDS = ("patrol.scan", "access.granted", "access.denied", "alarm.raised")
LOOKBACK = timedelta(hours=36)


@dataclass
class Task:
    """Scan ``checkpoint`` by ``due``: sent by an alarm (alarm-driven patrol)."""

    task_id: str
    alarm_id: str
    checkpoint: str
    raised: datetime
    due: datetime
    closed: bool = False


class PatrolTracker:
    """Rounds and findings of one site (see the module docstring)."""

    def __init__(
        self,
        settings: PatrolSettings,
        zone: ZoneInfo,
        journal: Journal,
        clock: Clock,
        *,
        readers: Mapping[str, str] | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.zone = zone
        self.journal = journal
        self.clock = clock
        self.interval_s = interval_s
        self.readers = dict(readers or {c.reader: c.id for c in settings.checkpoints if c.reader})
        self._tags: dict[str, str] = {}
        for cp in settings.checkpoints:
            # the typed code; the id only when no code is set (the id is in every QR URL)
            self._tags[(cp.code or cp.id).upper()] = cp.id
            for tag in cp.tags:
                self._tags[tag] = cp.id
        self._cards = {card: g.id for g in settings.guards for card in g.cards}
        self.scans: list[Scan] = []
        self.cursor = 0
        self._emitted: set[str] = set()
        self._loaded = False
        self.since = clock.now()
        self.tasks: dict[str, Task] = {}
        self._nearest = {d: c.id for c in settings.checkpoints for d in c.near}
        self._nearest.update({c.reader: c.id for c in settings.checkpoints if c.reader})

    def parts(self) -> list[tuple[str, PartFactory]]:
        return [("patrol", self.run)]

    # ---- reading scans ---------------------------------------------------------------

    def checkpoint_of(self, tag: str) -> str | None:
        return self._tags.get(tag.upper().replace(":", ""))

    def to_scan(
        self,
        kind: str,
        device: str | None,
        payload: Mapping[str, Any],
        received: datetime,
        eid: str,
    ) -> tuple[Scan, float | None] | None:
        """A scan (and its clock skew in seconds) from a journal event, or None."""
        if kind != "patrol.scan":
            checkpoint = self.readers.get(device or "")
            card = str(payload.get("card") or "").upper()
            guard = self._cards.get(card)
            if checkpoint is None or guard is None:
                return None  # an ordinary door swipe
            scan = Scan(
                f"{device}:{eid}", checkpoint, card, guard, "gate", received, received, device
            )
            return scan, None
        tag = str(payload.get("tag") or payload.get("checkpoint") or "")
        checkpoint = payload.get("checkpoint") or self.checkpoint_of(tag)
        skew = payload.get("clock_skew_s")
        skew_s = float(skew) if isinstance(skew, int | float) else None
        try:
            device_time = parse_rfc3339(str(payload["scanned_at"]))
        except (KeyError, ValueError):
            device_time = received
        at = device_time - timedelta(seconds=skew_s) if skew_s is not None else device_time
        guard = payload.get("guard")
        scan = Scan(
            str(payload.get("scan_id") or eid),
            str(checkpoint) if checkpoint else None,
            tag,
            str(guard) if guard else None,
            str(payload.get("method") or "unknown"),
            at,
            received,
            device,
        )
        return scan, skew_s

    # ---- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # a tracker bug must not stop the patrol records being kept
                log.exception("patrol tracker: evaluation failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def step(self) -> list[Finding]:
        """Read new scans, flag them, judge closed rounds; store new findings."""
        now = self.clock.now()
        if not self._loaded:
            stamp = to_rfc3339(now)
            # Rounds are judged from the day the tour was first tracked: a new
            # install must not report 36 hours of rounds nobody was asked to walk.
            self.since = parse_rfc3339(await self.journal.write(lambda c: _since(c, stamp)))
            since = to_rfc3339(now - LOOKBACK)
            rows = await self.journal.query(lambda c: _scan_rows(c, 0, since))
            self._loaded = True
        else:
            start = self.cursor
            rows = await self.journal.query(lambda c: _scan_rows(c, start, None))
        findings: list[Finding] = []
        for seq, kind, device, payload, received_at, eid in rows:
            self.cursor = max(self.cursor, seq)
            if kind == "alarm.raised":
                self._task_for(device, payload, parse_rfc3339(received_at))
                continue
            made = self.to_scan(kind, device, payload, parse_rfc3339(received_at), eid)
            if made is None:
                continue
            scan, skew = made
            before = [s for s in self.scans if s.at <= scan.at and s.at >= scan.at - LOOKBACK]
            findings += flag_scan(self.settings, scan, before, skew, self._on_route(scan))
            findings += self._late_upload(scan)
            self.scans.append(scan)
        self.scans = sorted((s for s in self.scans if s.at >= now - LOOKBACK), key=lambda s: s.at)
        grace = timedelta(minutes=float(self.settings.judge_after_min))
        for rnd in rounds_between(self.settings, self.zone, max(now - LOOKBACK, self.since), now):
            if rnd.closes + grace <= now:
                findings += judge(self.settings, rnd, self.scans)
        findings += self._tasks_findings(now)
        new = [f for f in findings if f.id not in self._emitted]
        if new:
            events = [
                Event(
                    f.kind, None, {**f.payload, "where": self._where(f)}, received_at=now, id=f.id
                )
                for f in new
            ]
            await self.journal.write(lambda conn: insert_events(conn, events))
            if len(self._emitted) > 50_000:  # forgetting only costs an ignored re-insert
                self._emitted.clear()
            self._emitted.update(f.id for f in new)
            log.info(
                "patrol findings stored count=%d kinds=%s", len(new), sorted({f.kind for f in new})
            )
        return new

    def _late_upload(self, scan: Scan) -> list[Finding]:
        """A scan that arrived after its round was judged: the judgement stands in
        the journal (and its alarm), so say so next to it."""
        grace = timedelta(minutes=float(self.settings.judge_after_min))
        for rnd in rounds_between(
            self.settings, self.zone, scan.at - timedelta(hours=12), scan.at + timedelta(hours=1)
        ):
            on = any(s.checkpoint == scan.checkpoint for s in rnd.route.stops)
            judged = rnd.closes + grace
            if on and rnd.start - grace <= scan.at <= judged and scan.received_at > judged:
                cp = self.settings.checkpoint(scan.checkpoint or "")
                payload: dict[str, object] = {
                    "reason": "late_upload",
                    "alarm": False,
                    "scan_id": scan.scan_id,
                    "checkpoint": scan.checkpoint,
                    "round": rnd.id,
                    "guard": scan.guard,
                    "where": cp.name if cp else scan.tag,
                    "scanned_at": to_rfc3339(scan.at),
                    "received_at": to_rfc3339(scan.received_at),
                }
                return [Finding(f"patrol-flag:{scan.scan_id}:late_upload", "patrol.flag", payload)]
        return []

    # ---- alarm-driven patrol --------------------------------------------------------

    def _task_for(self, device: str | None, alarm: Mapping[str, Any], raised: datetime) -> None:
        """An alarm of a task type on a device near a checkpoint sends a guard there."""
        minutes = self.settings.tasks.get(str(alarm.get("type")))
        checkpoint = self._nearest.get(device or "")
        if minutes is None or checkpoint is None or raised < self.since:
            return
        task_id = f"task:{alarm.get('occurrence') or alarm.get('alarm_id')}"
        self.tasks.setdefault(
            task_id,
            Task(
                task_id,
                str(alarm.get("alarm_id")),
                checkpoint,
                raised,
                raised + timedelta(minutes=float(minutes)),
            ),
        )

    def _tasks_findings(self, now: datetime) -> list[Finding]:
        found: list[Finding] = []
        for task in list(self.tasks.values()):
            cp = self.settings.checkpoint(task.checkpoint)
            where = cp.name if cp else task.checkpoint
            base: dict[str, object] = {
                "task_id": task.task_id,
                "alarm_id": task.alarm_id,
                "checkpoint": task.checkpoint,
                "due": to_rfc3339(task.due),
                "where": where,
            }
            found.append(Finding(f"patrol-task:{task.task_id}:open", "patrol.task", base))
            scan = next(
                (
                    s
                    for s in self.scans
                    if s.checkpoint == task.checkpoint and task.raised <= s.at <= task.due
                ),
                None,
            )
            if scan is not None:
                done = {**base, "guard": scan.guard, "scanned_at": to_rfc3339(scan.at)}
                found.append(Finding(f"patrol-task:{task.task_id}:done", "patrol.task_done", done))
                task.closed = True
            elif now > task.due:
                found.append(
                    Finding(f"patrol-task:{task.task_id}:missed", "patrol.task_missed", base)
                )
                task.closed = True
            if task.closed and now - task.due > LOOKBACK:
                del self.tasks[task.task_id]
        return found

    def open_tasks(self) -> list[dict[str, Any]]:
        return [
            {
                "task_id": t.task_id,
                "alarm_id": t.alarm_id,
                "checkpoint": t.checkpoint,
                "name": (
                    cp.name if (cp := self.settings.checkpoint(t.checkpoint)) else t.checkpoint
                ),
                "due": to_rfc3339(t.due),
            }
            for t in self.tasks.values()
            if not t.closed
        ]

    def _on_route(self, scan: Scan) -> bool:
        """Whether a round whose route has this checkpoint is open around the scan."""
        slack = timedelta(hours=1)
        for rnd in rounds_between(
            self.settings, self.zone, scan.at - timedelta(hours=12), scan.at + slack
        ):
            on = any(s.checkpoint == scan.checkpoint for s in rnd.route.stops)
            if on and rnd.start - slack <= scan.at <= rnd.closes + slack:
                return True
        return not self.settings.schedules  # no schedules: every scan is a free patrol

    def _where(self, finding: Finding) -> str:
        cp = self.settings.checkpoint(str(finding.payload.get("checkpoint") or ""))
        if cp is not None:
            return cp.name
        where = finding.payload.get("where")
        return str(where) if where else str(finding.payload.get("route") or "巡更")

    # ---- views -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Rounds in progress and those judged in the last 12 hours, for the screen
        and the shift handover."""
        now = self.clock.now()
        current: list[dict[str, Any]] = []
        recent: list[dict[str, Any]] = []
        since = max(now - timedelta(hours=12), self.since)
        for rnd in rounds_between(self.settings, self.zone, since, now + timedelta(minutes=1)):
            if rnd.closes > now:
                current.append(_progress(rnd, self.scans, now))
                continue
            findings = {f.kind: f for f in judge(self.settings, rnd, self.scans)}
            done = findings.get("patrol.round_finished")
            recent.append(
                {
                    "round": rnd.id,
                    "route_name": rnd.route.name,
                    "start": to_rfc3339(rnd.start),
                    "completion_pct": done.payload["completion_pct"] if done else 0.0,
                    "missed": done.payload["missed"]
                    if done
                    else [s.checkpoint for s in rnd.route.stops],
                    "late": sorted(
                        str(f.payload["checkpoint"])
                        for f in findings.values()
                        if f.kind == "patrol.checkpoint_late"
                    ),
                    "started": done is not None,
                }
            )
        day_ago = now - timedelta(hours=24)
        return {
            "in_progress": current,
            "tasks": self.open_tasks(),
            "recent": recent[-12:],
            "scans_24h": sum(1 for s in self.scans if s.at >= day_ago),
        }


def _progress(rnd: Round, scans: list[Scan], now: datetime) -> dict[str, Any]:
    stops = [s.checkpoint for s in rnd.route.stops]
    done = sorted(
        {
            s.checkpoint
            for s in scans
            if s.checkpoint in stops and rnd.start - timedelta(minutes=30) <= s.at <= now
        }
    )
    overdue = [
        c
        for c in stops
        if c not in done
        and rnd.due(c)
        + timedelta(
            minutes=float(next(x.deviation_min for x in rnd.route.stops if x.checkpoint == c))
        )
        < now
    ]
    return {
        "round": rnd.id,
        "route": rnd.route.id,
        "route_name": rnd.route.name,
        "start": to_rfc3339(rnd.start),
        "closes": to_rfc3339(rnd.closes),
        "done": done,
        "total": len(stops),
        "overdue": overdue,
    }


def _scan_rows(
    conn: sqlite3.Connection, after: int, since: str | None
) -> list[tuple[int, str, str | None, dict[str, Any], str, str]]:
    marks = ",".join("?" * len(SCAN_KINDS))
    sql = (
        f"SELECT seq, kind, device, payload, received_at, id FROM events "  # noqa: S608
        f"WHERE kind IN ({marks}) AND seq > ?"
    )
    params: list[Any] = [*SCAN_KINDS, after]
    if since is not None:
        sql += " AND received_at >= ?"
        params.append(since)
    out = []
    for seq, kind, device, payload, received_at, eid in conn.execute(sql + " ORDER BY seq", params):
        try:
            data = json.loads(payload)
        except ValueError:
            continue
        if isinstance(data, dict):
            out.append((int(seq), str(kind), device, data, str(received_at), str(eid)))
    return out


def _since(conn: sqlite3.Connection, now: str) -> str:
    """When the tour was first tracked on this journal (set on the first run)."""
    found = get_cursor(conn, "patrol.since", "")
    if found:
        return found
    set_cursor(conn, "patrol.since", now)
    return now


def last_scans(conn: sqlite3.Connection, limit: int = 500) -> list[dict[str, Any]]:
    """The newest ``patrol.scan`` payloads, newest first (for "where was this guard")."""
    rows = conn.execute(
        "SELECT payload FROM events WHERE kind = 'patrol.scan' ORDER BY seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for (payload,) in rows:
        data = json.loads(payload)
        if isinstance(data, dict):
            out.append(data)
    return out


def round_report(
    settings: PatrolSettings, zone: ZoneInfo, scans: list[Scan], start: datetime, end: datetime
) -> dict[str, Any]:
    """Rounds that closed in [start, end) and what each guard did in them."""
    rounds = []
    guards: dict[str, dict[str, int]] = {}
    for rnd in rounds_between(settings, zone, start - timedelta(hours=12), end):
        if not start <= rnd.closes < end:
            continue
        findings = judge(settings, rnd, scans)
        by_kind: dict[str, list[Finding]] = {}
        for f in findings:
            by_kind.setdefault(f.kind, []).append(f)
        done = next(iter(by_kind.get("patrol.round_finished", [])), None)
        payload: dict[str, Any] = dict(done.payload) if done else {}
        names = sorted(str(g) for g in payload.get("guards", []))
        row: dict[str, Any] = {
            "round": rnd.id,
            "route": rnd.route.id,
            "route_name": rnd.route.name,
            "start": rnd.start.astimezone(zone).isoformat(timespec="minutes"),
            "started": done is not None,
            "completion_pct": float(payload.get("completion_pct", 0.0)),
            "missed": payload.get("missed", [s.checkpoint for s in rnd.route.stops]),
            "late": [f.payload["checkpoint"] for f in by_kind.get("patrol.checkpoint_late", [])],
            "early": [f.payload["checkpoint"] for f in by_kind.get("patrol.checkpoint_early", [])],
            "out_of_order": "patrol.out_of_order" in by_kind,
            "guards": names,
        }
        rounds.append(row)
        for name in names or ["—"]:
            mine = guards.setdefault(name, {"rounds": 0, "complete": 0, "late": 0, "missed": 0})
            mine["rounds"] += 1
            mine["complete"] += int(row["completion_pct"] == 100.0)
            mine["late"] += len(row["late"])
            mine["missed"] += len(row["missed"])
    complete = sum(1 for r in rounds if r["completion_pct"] == 100.0)
    return {
        "from": to_rfc3339(start),
        "to": to_rfc3339(end),
        "rounds": rounds,
        "guards": guards,
        "totals": {
            "rounds": len(rounds),
            "not_started": sum(1 for r in rounds if not r["started"]),
            "complete": complete,
            "completion_avg_pct": round(
                sum(float(r["completion_pct"]) for r in rounds) / len(rounds), 1
            )
            if rounds
            else None,
        },
    }
