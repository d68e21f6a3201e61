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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events and audit", _initial),
    Migration(2, "meter baselines and period closes", _meters),
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
