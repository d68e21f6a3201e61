"""The alarm engine as a part of the service: journal in, journal out, then tell.

One task tails the journal (woken by each commit, and every ``tick_s`` for
timers), feeds new events to the engine and commits the resulting effects —
alarm rows, ``alarm.*`` events, incident revisions in the outbox — in one
journal write together with the engine's cursor. So every committed event is
processed exactly once, whatever stops the gateway. Only after that commit is
the change published on the live stream and are automatic actions started.

Operators' commands take the same lock, so an acknowledgement and an event
for the same alarm never interleave; each is audited in its own commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gateway.alarms.engine import ActionRequest, AlarmEngine, Effects, Notice
from gateway.alarms.model import Alarm
from gateway.alarms.plan import Plan
from gateway.alarms.rules import Directory
from gateway.alarms.stream import AlarmStream
from gateway.audit import insert_audit
from gateway.auth import Principal
from gateway.clock import Clock, parse_rfc3339, to_rfc3339
from gateway.commands import CommandFailed, DeviceCommands
from gateway.errors import JournalError
from gateway.journal.store import Journal, insert_events
from gateway.supervisor import PartFactory
from gateway.sync import outbox
from gateway.sync.central_state import (
    get_cursor,
    outage_notices,
    set_cursor,
    store_outage_notices,
)
from gateway.sync.side import incident_item

log = logging.getLogger(__name__)

CURSOR = "alarms.cursor"
MEMORY = "alarms.memory"
BATCH = 5000
MEMORY_EVERY_S = 10.0
ENGINE = Principal("gateway", "admin", "报警引擎 alarm engine")
# Which command carries out each automatic action, by device kind, best first.
_LINKAGE: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "release_gates": (("door", "turnstile"), ("hold_open", "open_door")),
    "raise_barriers": (("barrier",), ("hold_open", "raise_barrier")),
}


class AlarmService:
    """Runs the engine for the service (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        directory: Directory,
        journal: Journal,
        clock: Clock,
        *,
        site_name: str,
        commands: DeviceCommands | None = None,
        on_incident: Callable[[], None] | None = None,
        tick_s: float = 1.0,
    ) -> None:
        self.plan = plan
        self.directory = directory
        self.journal = journal
        self.clock = clock
        self.site_name = site_name
        self.commands = commands
        self.on_incident = on_incident
        self.tick_s = tick_s
        self.stream = AlarmStream()
        self.lock = asyncio.Lock()
        self.engine: AlarmEngine | None = None
        self.cursor = 0
        self._memory_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def parts(self) -> list[tuple[str, PartFactory]]:
        return [("alarms", self.run)]

    # ---- loading ----------------------------------------------------------------------

    async def load(self) -> AlarmEngine:
        """Build the engine from the stored alarms, cursor and memory."""
        now = self.clock.now()
        stored = await self.journal.query(_load_rows)
        engine = AlarmEngine(
            self.plan,
            self.directory,
            site_name=self.site_name,
            started=now,
            alarms=[a for a in stored.alarms if _known(self.plan, a)],
            notices=stored.notices,
            raises=stored.memory.get("raises", []),
            flood=bool(stored.memory.get("flood", False)),
        )
        engine.restore(stored.memory.get("rules", {}))
        self.cursor = stored.cursor
        # Rule memory is flushed every MEMORY_EVERY_S: replay what came after it.
        replay_from = min(int(stored.memory.get("seq", self.cursor)), self.cursor)
        upto = self.cursor
        for low in range(replay_from, upto, BATCH):  # windows of seq: at most BATCH rows each
            high = min(low + BATCH, upto)
            rows = await self.journal.query(_window(low, high, engine))
            for _seq, kind, device, payload, at in rows:
                engine.dry_run(kind, device, payload, at)
        self.engine = engine
        log.info(
            "alarm engine loaded alarms=%d active=%d cursor=%d rules=%d",
            len(engine.alarms),
            sum(1 for a in engine.alarms.values() if a.active),
            self.cursor,
            len(self.plan.rules),
        )
        return engine

    # ---- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        if self.engine is None:
            await self.load()
        next_tick = 0.0
        while True:
            signal = self.journal.commit_signal()
            try:
                await self.step(tick=time.monotonic() >= next_tick)
            except JournalError as exc:
                log.error("alarm engine: commit failed, reloading from the journal: %s", exc)
                await asyncio.sleep(1.0)
                await self.load()
                continue
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.tick_s
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
            # that arrives as the commit signal fires, and the part never stops.
            try:
                async with asyncio.timeout(max(0.0, next_tick - time.monotonic())):
                    await signal.wait()
            except TimeoutError:
                pass

    async def step(self, *, tick: bool = True) -> None:
        """Process new events (and timers); commit; publish; start actions."""
        async with self.lock:
            engine = self.engine or await self.load()
            start = self.cursor
            kinds = engine.kinds
            top, rows = await self.journal.query(
                lambda c: _new_events(c, start, kinds, BATCH, engine.wants)
            )
            now = self.clock.now()
            for seq, kind, device, payload, _at in rows:
                try:
                    engine.on_event(kind, device, payload, now)
                except Exception:  # an engine bug must not stop every later alarm
                    log.exception("alarm engine: event seq=%d kind=%s not evaluated", seq, kind)
            if tick:
                engine.tick(now)
            fx = engine.take()
            memory = None
            if fx or time.monotonic() - self._memory_at >= MEMORY_EVERY_S:
                memory = self._memory(engine, top)
            if not fx and memory is None:
                self.cursor = top
                return
            await self._commit(fx, top, memory, now)
            self.cursor = top
        self._after_commit(fx, now)

    async def flush(self) -> None:
        """Store the engine's memory now (clean stop)."""
        async with self.lock:
            if self.engine is not None:
                memory = self._memory(self.engine, self.cursor)
                await self._commit(Effects(), self.cursor, memory, self.clock.now())

    def _memory(self, engine: AlarmEngine, seq: int) -> dict[str, Any]:
        self._memory_at = time.monotonic()
        return {
            "seq": seq,
            "rules": engine.memory(),
            "raises": [to_rfc3339(t) for t in engine.raises],
            "flood": engine.flood,
        }

    async def _commit(
        self,
        fx: Effects,
        cursor: int,
        memory: dict[str, Any] | None,
        now: datetime,
        audit: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        stamp = to_rfc3339(now)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO alarms (alarm_id, body, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (alarm_id) DO UPDATE SET body = excluded.body, "
                "updated_at = excluded.updated_at",
                [(a.alarm_id, a.to_json(), stamp) for a in fx.alarms.values()],
            )
            insert_events(conn, fx.events)
            if fx.incidents:
                outbox.enqueue(conn, [incident_item(i) for i in fx.incidents.values()], stamp)
            set_cursor(conn, CURSOR, str(cursor))
            if memory is not None:
                set_cursor(conn, MEMORY, json.dumps(memory, separators=(",", ":")))
            if audit is not None:
                audit(conn)

        await self.journal.write(op)

    def _after_commit(self, fx: Effects, now: datetime) -> None:
        engine = self.engine
        assert engine is not None
        for alarm in fx.alarms.values():
            self.stream.publish({"type": "alarm", "alarm": engine.view(alarm, now)})
        for event in fx.events:
            if event.kind == "alarm.flood":
                self.stream.publish({"type": "flood", **event.payload})
        if fx.incidents and self.on_incident is not None:
            self.on_incident()
        for request in fx.actions:
            task = asyncio.create_task(self._act(request), name=f"alarm-action-{request.action}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- automatic actions ------------------------------------------------------------

    async def _act(self, request: ActionRequest) -> None:
        """Run one automatic action on every device it concerns; record each outcome."""
        kinds, commands = _LINKAGE[request.action]
        targets = [d for d in self.directory.devices.values() if d.kind in kinds]
        if self.commands is None or not targets:
            await self._record(request, f"{request.action}: 无可控设备 no devices to command")
            return

        async def one(device: str) -> str:
            assert self.commands is not None
            action = next((c for c in commands if self.commands.supports(device, c)), None)
            if action is None:
                return f"{request.action} {device}: 不支持 not supported by its profile"
            try:
                request_id = await self.commands.command(device, action)
            except CommandFailed as exc:
                return f"{request.action} {device}: 失败 FAILED {action}: {exc}"
            return f"{request.action} {device}: 设备已确认 confirmed {action} ({request_id})"

        outcomes = await asyncio.gather(*(one(d.id) for d in targets))
        for outcome in outcomes:
            await self._record(request, outcome)

    async def _record(self, request: ActionRequest, outcome: str) -> None:
        log.info("alarm action alarm=%s %s", request.alarm_id, outcome)
        await self.command(
            lambda engine, now: engine.record_action(
                request.alarm_id, request.occurrence, outcome, now
            ),
            audit=(ENGINE, f"alarm.{request.action}", request.alarm_id, outcome),
        )

    # ---- operators --------------------------------------------------------------------

    async def command(
        self,
        change: Callable[[AlarmEngine, datetime], Any],
        *,
        audit: tuple[Principal, str, str, str | None] | None = None,
    ) -> Any:
        """Apply an operator's (or an action's) change, commit it with its audit row."""
        async with self.lock:
            engine = self.engine or await self.load()
            now = self.clock.now()
            try:
                result = change(engine, now)
            except BaseException:
                engine.take()  # a refused command changed nothing worth keeping
                raise
            fx = engine.take()
            recorder = None
            if audit is not None:
                who, action, target, reason = audit

                def recorder(conn: sqlite3.Connection) -> None:
                    insert_audit(conn, who, action, target, reason=reason)

            try:
                await self._commit(fx, self.cursor, None, now, recorder)
            except JournalError:
                await self.load()  # memory may hold the change the journal refused
                raise
        self._after_commit(fx, now)
        return result

    async def plan_outage(self, notice: Mapping[str, Any], who: Principal) -> None:
        """A supervisor's planned cut: stored and journalled like central's notices
        (the engine reads it from the journal), audited in the same commit."""
        now = to_rfc3339(self.clock.now())

        def op(conn: sqlite3.Connection) -> None:
            store_outage_notices(conn, [notice], now, "outage.planned")
            insert_audit(
                conn, who, "outage.plan", str(notice["notice_id"]), reason=str(notice["reason"])
            )

        await self.journal.write(op)

    def views(self) -> list[dict[str, Any]]:
        engine = self.engine
        if engine is None:
            return []
        now = self.clock.now()
        return [engine.view(a, now) for a in engine.alarms.values()]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class _Stored:
    def __init__(
        self,
        alarms: list[Alarm],
        cursor: int,
        memory: dict[str, Any],
        notices: list[Notice],
    ) -> None:
        self.alarms = alarms
        self.cursor = cursor
        self.memory = memory
        self.notices = notices


def _known(plan: Plan, alarm: Alarm) -> bool:
    """A stored alarm whose rule the (edited) plan no longer has is left out, loudly."""
    if any(r.id == alarm.rule for r in plan.rules) and alarm.type in plan.types:
        return True
    log.warning("alarm %s: its rule or type is no longer in the plan; not loaded", alarm.alarm_id)
    return False


def _load_rows(conn: sqlite3.Connection) -> _Stored:
    alarms = [Alarm.from_json(row[0]) for row in conn.execute("SELECT body FROM alarms")]
    cursor = int(get_cursor(conn, CURSOR, "0"))  # set by the migration that made the table
    memory = json.loads(get_cursor(conn, MEMORY, "{}"))
    notices = []
    for n in outage_notices(conn):
        notices.append(
            Notice(
                n.notice_id,
                n.utility,
                tuple(n.scope),
                parse_rfc3339(n.starts_at),
                parse_rfc3339(n.ends_at),
            )
        )
    return _Stored(alarms, cursor, memory, notices)


EventRow = tuple[int, str, str | None, dict[str, Any], datetime]


def _events(
    conn: sqlite3.Connection,
    after: int,
    upto: int,
    kinds: frozenset[str],
    limit: int,
    wants: Callable[[str, str | None], bool],
) -> list[EventRow]:
    marks = ",".join("?" * len(kinds))
    rows = conn.execute(
        f"SELECT seq, kind, device, payload, received_at FROM events "  # noqa: S608 (placeholders)
        f"WHERE seq > ? AND seq <= ? AND kind IN ({marks}) ORDER BY seq LIMIT ?",
        (after, upto, *sorted(kinds), limit),
    ).fetchall()
    out: list[EventRow] = []
    for seq, kind, device, payload, received_at in rows:
        if not wants(kind, device):
            continue
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ValueError("payload is not a JSON object")
            out.append((seq, kind, device, data, parse_rfc3339(received_at)))
        except ValueError as exc:
            log.error("alarm engine: event seq=%d kind=%s skipped: %s", seq, kind, exc)
    return out


def _window(low: int, high: int, engine: AlarmEngine) -> Callable[[sqlite3.Connection], Any]:
    """A read of the relevant events with seq in (low, high], for the replay."""
    return lambda conn: _events(conn, low, high, engine.kinds, BATCH, engine.wants)


def _new_events(
    conn: sqlite3.Connection,
    after: int,
    kinds: frozenset[str],
    limit: int,
    wants: Callable[[str, str | None], bool],
) -> tuple[int, list[EventRow]]:
    """Up to ``limit`` relevant events after ``after``, and how far that read reached."""
    top = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    rows = conn.execute(
        "SELECT seq FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1 OFFSET ?",
        (after, top, limit - 1),
    ).fetchone()
    if rows is not None:  # more than a batch waiting: this read stops at a batch
        top = int(rows[0])
    return top, _events(conn, after, top, kinds, limit, wants)
