"""The journal's schema and its migrations, recorded in the database itself.

Each migration runs in one transaction and is recorded in
``schema_migrations``; a journal written by a newer gateway (a version this
code does not know) is refused rather than guessed at, so a downgrade never
silently corrupts data (restore the backup taken before the upgrade instead).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from gateway.clock import to_rfc3339, utc_now


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,          -- commit order; cursors of readers
            id TEXT NOT NULL UNIQUE,          -- stable id: a retry is stored once
            kind TEXT NOT NULL,
            device TEXT,
            device_time TEXT,                 -- the device's own clock, if any
            received_at TEXT NOT NULL,        -- gateway clock, RFC 3339 UTC
            payload TEXT NOT NULL             -- JSON
        )"""
    )
    conn.execute("CREATE INDEX events_kind ON events (kind, seq)")
    conn.execute("CREATE INDEX events_device ON events (device, seq)")
    conn.execute(
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            who TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            reason TEXT,
            detail TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    # Append-only: the audit trail is evidence, so the database itself refuses
    # to change or remove a row, whoever asks.
    conn.execute(
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"""
    )
    conn.execute(
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"""
    )


def _meters(conn: sqlite3.Connection) -> None:
    # The last good value of each counter: the VEE baseline, restored at start
    # without scanning the journal; updated in the same commit as the reading.
    conn.execute(
        """CREATE TABLE meter_baseline (
            meter TEXT NOT NULL,
            register TEXT NOT NULL,
            value REAL NOT NULL,
            read_at TEXT NOT NULL,            -- RFC 3339 UTC
            replaced_with REAL,               -- new meter's first reading, until the next good one
            PRIMARY KEY (meter, register)
        )"""
    )
    # One row per billed meter and month: owed until read at the boundary or estimated.
    conn.execute(
        """CREATE TABLE period_close (
            meter TEXT NOT NULL,
            period TEXT NOT NULL,             -- 'YYYY-MM', the month that closed
            boundary TEXT NOT NULL,           -- RFC 3339 UTC of 00:00 site time on the 1st
            status TEXT NOT NULL,             -- owed | read | estimated | manual
            event_id TEXT,                    -- the meter.reading event that closes it
            PRIMARY KEY (meter, period)
        )"""
    )
    conn.execute("CREATE INDEX period_close_status ON period_close (status, period)")


def _sync(conn: sqlite3.Connection) -> None:
    # What central has not yet acknowledged, one row per item, body exactly as
    # sent. A row is deleted in the same commit that records central's answer,
    # so a crash at any point re-sends (central de-duplicates) and never skips.
    conn.execute(
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,          -- send order within a stream
            stream TEXT NOT NULL,             -- meter-readings | incidents | heartbeat | ...
            item_id TEXT NOT NULL,            -- reading_id, incident_id: central's idempotency key
            revision INTEGER NOT NULL DEFAULT 0,
            body TEXT NOT NULL,               -- the item's JSON
            bytes INTEGER NOT NULL,
            keep INTEGER NOT NULL DEFAULT 0,  -- 1: never thinned (period close, incident, record)
            meter TEXT,                       -- meter readings: for thinning
            read_at TEXT,                     -- meter readings: RFC 3339 UTC
            queued_at TEXT NOT NULL
        )"""
    )
    # Covers the backlog figures (count and bytes per stream) without reading bodies.
    conn.execute("CREATE INDEX outbox_stream ON outbox (stream, seq, bytes)")
    # One queued copy per incident (or record): a newer revision replaces it. Meter
    # readings are left out on purpose: the feeder queues each exactly once, and
    # an index over a million reading ids in random order made every delivered
    # batch rewrite ~1,000 index pages (bench/sync_drain.py: 9.5k → 15k readings/s).
    conn.execute(
        "CREATE UNIQUE INDEX outbox_item ON outbox (stream, item_id) "
        "WHERE stream != 'meter-readings'"
    )
    # Items central refused for good (4xx, per-item 'rejected'): kept with the
    # error until a supervisor re-queues a corrected copy.
    conn.execute(
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY,
            stream TEXT NOT NULL,
            item_id TEXT NOT NULL,
            revision INTEGER NOT NULL,
            body TEXT NOT NULL,
            keep INTEGER NOT NULL,
            meter TEXT,
            read_at TEXT,
            error TEXT NOT NULL,
            failed_at TEXT NOT NULL,
            requeued_at TEXT,
            requeued_by TEXT
        )"""
    )
    conn.execute("CREATE INDEX dead_letters_open ON dead_letters (requeued_at, id)")
    conn.execute(
        """CREATE TABLE sync_streams (
            stream TEXT PRIMARY KEY,
            accepted INTEGER NOT NULL DEFAULT 0,
            duplicate INTEGER NOT NULL DEFAULT 0,
            stale INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0,
            thinned INTEGER NOT NULL DEFAULT 0,
            last_success TEXT,
            last_error TEXT,
            last_error_at TEXT
        )"""
    )
    # Positions that must survive a restart: the feeder's event seq, the pull cursors.
    conn.execute("CREATE TABLE sync_cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # Period closes central has acknowledged: raw readings inside such a period may be thinned.
    conn.execute(
        """CREATE TABLE delivered_closes (
            meter TEXT NOT NULL, boundary TEXT NOT NULL, PRIMARY KEY (meter, boundary))"""
    )
    conn.execute(
        """CREATE TABLE central_tickets (
            incident_id TEXT PRIMARY KEY,
            ticket_no TEXT,
            state TEXT,                       -- central's latest state of the ticket
            note TEXT,
            updated_at TEXT
        )"""
    )
    conn.execute(
        """CREATE TABLE outage_notices (
            notice_id TEXT PRIMARY KEY,
            utility TEXT NOT NULL,
            scope TEXT NOT NULL,              -- JSON list of building ids
            starts_at TEXT NOT NULL,
            ends_at TEXT NOT NULL,
            reason TEXT,
            received_at TEXT NOT NULL
        )"""
    )


def _parking(conn: sqlite3.Connection) -> None:
    # Cars in each lot by vehicle class, updated in the commit of the barrier's
    # event, so a redelivered event (same id, not inserted again) counts once.
    conn.execute(
        """CREATE TABLE occupancy (
            lot TEXT NOT NULL,
            class TEXT NOT NULL,              -- temporary | monthly | vip | stored_value | unknown
            count INTEGER NOT NULL,
            PRIMARY KEY (lot, class)
        )"""
    )


def _alarms(conn: sqlite3.Connection) -> None:
    # Each alarm's whole current state (gateway.alarms.model.Alarm as JSON), written
    # in the commit of the transition that changed it, with the engine's event
    # cursor: after kill -9 every alarm is exactly as the guard last saw it.
    conn.execute(
        """CREATE TABLE alarms (
            alarm_id TEXT PRIMARY KEY,        -- rule:source, stable
            body TEXT NOT NULL,               -- JSON
            updated_at TEXT NOT NULL
        )"""
    )
    # The engine starts where the journal is when it is installed: history before
    # it is not replayed as fresh alarms; every event committed after it is seen.
    conn.execute(
        "INSERT INTO sync_cursors (name, value) "
        "SELECT 'alarms.cursor', coalesce(max(seq), 0) FROM events"
    )


def _handovers(conn: sqlite3.Connection) -> None:
    # Shift handover records (交接班): the body is frozen when the outgoing guard
    # creates it; the incoming guard's signature is the only later change.
    conn.execute(
        """CREATE TABLE handovers (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            outgoing TEXT NOT NULL,           -- user name of the outgoing guard (signs by creating)
            incoming TEXT,                    -- user name of the incoming guard, once signed
            signed_at TEXT,
            body TEXT NOT NULL                -- JSON: the record as created
        )"""
    )
    conn.execute("CREATE INDEX handovers_created ON handovers (created_at)")


def _reports(conn: sqlite3.Connection) -> None:
    # Guard-room reports (报事/报修): the whole state as JSON (gateway.reports.model.Report),
    # written in the commit of the step that changed it, with its event, incident
    # revision and audit row. The resident's contact is kept apart, so no query
    # of reports can leak it; it is read only through the audited contact view.
    conn.execute(
        """CREATE TABLE reports (
            report_id TEXT PRIMARY KEY,       -- R-<site day>-<nnn>, also the incident id
            created_at TEXT NOT NULL,         -- RFC 3339 UTC
            state TEXT NOT NULL,
            body TEXT NOT NULL                -- JSON
        )"""
    )
    conn.execute("CREATE INDEX reports_created ON reports (created_at)")
    conn.execute("CREATE INDEX reports_state ON reports (state)")
    conn.execute(
        """CREATE TABLE report_contacts (
            report_id TEXT PRIMARY KEY REFERENCES reports (report_id),
            name TEXT,
            phone TEXT
        )"""
    )
    # Central's ticket updates are copied into report timelines from here on.
    conn.execute(
        "INSERT INTO sync_cursors (name, value) "
        "SELECT 'reports.cursor', coalesce(max(seq), 0) FROM events"
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events and audit", _initial),
    Migration(2, "meter baselines and period closes", _meters),
    Migration(3, "sync outbox, dead letters, central tickets and notices", _sync),
    Migration(4, "parking occupancy", _parking),
    Migration(5, "alarm states", _alarms),
    Migration(6, "shift handovers", _handovers),
    Migration(7, "guard-room reports", _reports),
)
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(conn: sqlite3.Connection) -> int:
    """The highest migration recorded in the database (0 for a new file)."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not has_table:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration newer than the database; return the versions applied.

    The connection must be in autocommit mode (``isolation_level=None``); each
    migration is wrapped in its own ``BEGIN IMMEDIATE`` … ``COMMIT``.
    """
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"""
    )
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= current_version(conn):
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            migration.apply(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, to_rfc3339(utc_now())),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
