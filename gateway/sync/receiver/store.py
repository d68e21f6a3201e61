"""What the reference receiver accepted: its own SQLite file.

Tests prove "nothing lost, nothing counted twice" against this file, so each
reading is stored once under its ``(site_id, reading_id)`` with a
``deliveries`` count of every time a valid copy arrived. Incidents keep their
highest revision and the ticket number given on first sight. The two feeds
(ticket updates, outage notices) are append-only tables whose integer
sequence is the cursor. Totals live in a ``counters`` table, updated in the
same transaction as the data, so the statistics cost nothing to read even
after a million readings.

Readings are a rowid table (rows append in arrival order) with a unique
index on ``(site_id, reading_id)``: only that narrow index takes the
scattered inserts of ids that arrive in no key order. A clustered
``WITHOUT ROWID`` table was a third slower per batch at a million readings.

One connection serves the receiver's event loop (all writes) and the helper
queries of tests from other threads, behind a lock: a test tool does not need
more, and a batch of 1,000 readings is one short transaction. WAL with
``synchronous=NORMAL``: a commit does not wait for the disk (the receiver
stands in for a remote system; what it must show is what it answered).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    site_id TEXT NOT NULL,
    reading_id TEXT NOT NULL,
    meter_id TEXT NOT NULL,
    utility TEXT NOT NULL,
    register TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    read_at TEXT NOT NULL,
    quality TEXT NOT NULL,
    source TEXT NOT NULL,
    billing_period TEXT,
    flags TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_key ON readings (site_id, reading_id);
CREATE TABLE IF NOT EXISTS incidents (
    site_id TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    ticket_no TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    first_received_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (site_id, incident_id)
);
CREATE TABLE IF NOT EXISTS ticket_updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id TEXT NOT NULL,
    ticket_no TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    state TEXT NOT NULL,
    note TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ticket_updates_by_site ON ticket_updates (site_id, seq);
CREATE TABLE IF NOT EXISTS outage_notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id TEXT NOT NULL,
    notice_id TEXT NOT NULL,
    utility TEXT NOT NULL,
    scope TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outage_notices_by_site ON outage_notices (site_id, seq);
CREATE TABLE IF NOT EXISTS heartbeats (
    site_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    site_id TEXT,
    status INTEGER NOT NULL,
    items INTEGER NOT NULL,
    fault TEXT,
    ms REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

_READING_COLUMNS = (
    "site_id, reading_id, meter_id, utility, register, value, unit, read_at, quality, source, "
    "billing_period, flags, batch_id, received_at"
)
_READING_ROW = "(" + ", ".join("?" * 14) + ")"
_ROWS_PER_STATEMENT = 1000
_BUMP = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_NOTICE_KEYS = ("notice_id", "utility", "scope", "starts_at", "ends_at", "reason")
COUNTER_NAMES = (
    "readings_accepted",
    "readings_duplicate",
    "readings_rejected",
    "incidents_accepted",
    "incidents_stale",
    "incidents_rejected",
    "heartbeats",
)


@lru_cache(maxsize=8)
def _insert_readings_sql(rows: int) -> str:
    """One multi-row upsert whose RETURNING tells which ids were new.

    A row that already exists only has its ``deliveries`` raised, so a returned
    ``deliveries`` of 1 means "stored by this statement". (``executemany``
    cannot return rows, and one statement per batch is also the fastest.)
    """
    return (
        f"INSERT INTO readings ({_READING_COLUMNS}) VALUES "  # noqa: S608 (placeholders only)
        + ", ".join([_READING_ROW] * rows)
        + " ON CONFLICT (site_id, reading_id) DO UPDATE SET deliveries = deliveries + 1"
        " RETURNING reading_id, deliveries"
    )


def utc_now() -> str:
    """The receiver's clock for ``received_at`` columns (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReceiverStore:
    """The receiver's database; see the module docstring.

    Every method may be called from any thread.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path) -> ReceiverStore:
        """Open (creating if needed) the receiver database at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"receiver database {path}: schema version {version} is newer than "
                    f"this receiver knows ({SCHEMA_VERSION})"
                )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # The key index of a million readings is ~60 MB and takes inserts all
            # over; keeping it cached saves ~15 % per batch (measured, 1M readings).
            conn.execute("PRAGMA cache_size = -65536")
            # Checkpoint every 64 MiB of WAL, not 4 MiB: the inserts rewrite the same
            # index pages batch after batch, and a checkpoint writes each page once.
            conn.execute("PRAGMA wal_autocheckpoint = 16384")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- the API's writes -----------------------------------------------------------

    def add_readings(
        self, site_id: str, batch_id: str, items: Sequence[Mapping[str, Any]], rejected: int
    ) -> list[bool]:
        """Store valid readings in one transaction; for each item, whether it was new.

        An id seen before (in an earlier batch or earlier in this one) is not
        changed: only its ``deliveries`` count rises, and it answers False.
        """
        received_at = utc_now()
        rows = [
            (
                site_id,
                item["reading_id"],
                item["meter_id"],
                item["utility"],
                item["register"],
                item["value"],
                item["unit"],
                item["read_at"],
                item["quality"],
                item["source"],
                item.get("billing_period"),
                json.dumps(flags) if (flags := item.get("flags")) else "[]",
                batch_id,
                received_at,
            )
            for item in items
        ]
        first_deliveries: set[str] = set()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                    chunk = rows[start : start + _ROWS_PER_STATEMENT]
                    sql = _insert_readings_sql(len(chunk))
                    params = list(chain.from_iterable(chunk))
                    for reading_id, deliveries in self._conn.execute(sql, params):
                        if deliveries == 1:
                            first_deliveries.add(reading_id)
                new = []
                for item in items:
                    reading_id = item["reading_id"]
                    new.append(reading_id in first_deliveries)
                    first_deliveries.discard(reading_id)  # a repeat in the batch is a duplicate
                accepted = sum(new)
                self._bump(
                    readings_accepted=accepted,
                    readings_duplicate=len(items) - accepted,
                    readings_rejected=rejected,
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return new

    def add_incidents(
        self, site_id: str, items: Sequence[Mapping[str, Any]], rejected: int
    ) -> list[tuple[str, str]]:
        """Keep each incident's highest revision; ``(status, ticket_no)`` per item.

        A new incident gets the next ``T-<year>-<6 digits>``; a higher revision
        replaces the stored one and keeps its ticket; an equal or lower one is
        ``stale`` and changes nothing.
        """
        received_at = utc_now()
        results: list[tuple[str, str]] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for item in items:
                    incident_id = item["incident_id"]
                    row = self._conn.execute(
                        "SELECT revision, ticket_no FROM incidents "
                        "WHERE site_id = ? AND incident_id = ?",
                        (site_id, incident_id),
                    ).fetchone()
                    body = json.dumps(item, ensure_ascii=False)
                    if row is None:
                        ticket_no = self._next_ticket_no(received_at[:4])
                        self._conn.execute(
                            "INSERT INTO incidents (site_id, incident_id, revision, ticket_no, "
                            "body, first_received_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                site_id,
                                incident_id,
                                item["revision"],
                                ticket_no,
                                body,
                                received_at,
                                received_at,
                            ),
                        )
                        results.append(("accepted", ticket_no))
                    elif item["revision"] > row[0]:
                        self._conn.execute(
                            "UPDATE incidents SET revision = ?, body = ?, received_at = ?, "
                            "deliveries = deliveries + 1 WHERE site_id = ? AND incident_id = ?",
                            (item["revision"], body, received_at, site_id, incident_id),
                        )
                        results.append(("accepted", row[1]))
                    else:
                        self._conn.execute(
                            "UPDATE incidents SET deliveries = deliveries + 1 "
                            "WHERE site_id = ? AND incident_id = ?",
                            (site_id, incident_id),
                        )
                        results.append(("stale", row[1]))
                accepted = sum(1 for status, _ in results if status == "accepted")
                self._bump(
                    incidents_accepted=accepted,
                    incidents_stale=len(results) - accepted,
                    incidents_rejected=rejected,
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return results

    def _next_ticket_no(self, year: str) -> str:
        """The year's next ticket number (inside the caller's transaction)."""
        name = f"ticket_seq_{year}"
        self._conn.execute(_BUMP, (name, 1))
        (seq,) = self._conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return f"T-{year}-{seq:06d}"

    def _bump(self, **counts: int) -> None:
        self._conn.executemany(_BUMP, [(name, n) for name, n in counts.items() if n])

    def record_heartbeat(self, site_id: str, body: Mapping[str, Any]) -> None:
        """Keep the site's last heartbeat."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO heartbeats (site_id, received_at, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (site_id) DO UPDATE SET received_at = excluded.received_at, "
                    "body = excluded.body",
                    (site_id, utc_now(), json.dumps(body, ensure_ascii=False)),
                )
                self._bump(heartbeats=1)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def log_request(
        self,
        method: str,
        path: str,
        site_id: str | None,
        status: int,
        items: int,
        fault: str | None,
        ms: float,
    ) -> None:
        """One line of the request log shown on the page."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO requests (at, method, path, site_id, status, items, fault, ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (utc_now(), method, path, site_id, status, items, fault, round(ms, 2)),
            )

    # -- the central side's feeds ---------------------------------------------------

    def add_ticket_update(
        self,
        site_id: str,
        *,
        state: str,
        incident_id: str | None = None,
        ticket_no: str | None = None,
        note: str = "",
        at: str | None = None,
    ) -> dict[str, Any]:
        """Append a ticket update for a stored incident (by incident_id or ticket_no).

        Raises LookupError if the site has no such incident.
        """
        with self._lock:
            if incident_id is not None:
                row = self._conn.execute(
                    "SELECT incident_id, ticket_no FROM incidents "
                    "WHERE site_id = ? AND incident_id = ?",
                    (site_id, incident_id),
                ).fetchone()
            else:
                row = self._conn.execute(
                    "SELECT incident_id, ticket_no FROM incidents "
                    "WHERE site_id = ? AND ticket_no = ?",
                    (site_id, ticket_no),
                ).fetchone()
            if row is None:
                raise LookupError(
                    f"site {site_id} has no incident "
                    + (f"{incident_id!r}" if incident_id is not None else f"ticket {ticket_no!r}")
                )
            update = {
                "ticket_no": row[1],
                "incident_id": row[0],
                "state": state,
                "note": note,
                "at": at if at is not None else utc_now(),
            }
            cursor = self._conn.execute(
                "INSERT INTO ticket_updates (site_id, ticket_no, incident_id, state, note, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (site_id, update["ticket_no"], update["incident_id"], state, note, update["at"]),
            )
        return {"cursor": str(cursor.lastrowid), **update}

    def add_outage_notice(self, site_id: str, notice: Mapping[str, Any]) -> dict[str, Any]:
        """Append a planned outage notice to the site's feed."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO outage_notices "
                "(site_id, notice_id, utility, scope, starts_at, ends_at, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    site_id,
                    notice["notice_id"],
                    notice["utility"],
                    json.dumps(list(notice["scope"]), ensure_ascii=False),
                    notice["starts_at"],
                    notice["ends_at"],
                    notice["reason"],
                ),
            )
        return {key: notice[key] for key in _NOTICE_KEYS}

    def ticket_updates(
        self, site_id: str, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Updates after the cursor, oldest first, and the cursor of the last one."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, ticket_no, incident_id, state, note, at FROM ticket_updates "
                "WHERE site_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (site_id, after, limit),
            ).fetchall()
        updates = [
            {"cursor": str(seq), "ticket_no": t, "incident_id": i, "state": s, "note": n, "at": a}
            for seq, t, i, s, n, a in rows
        ]
        return updates, rows[-1][0] if rows else after

    def outage_notices(
        self, site_id: str, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Notices after the cursor, oldest first, and the cursor of the last one."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, notice_id, utility, scope, starts_at, ends_at, reason "
                "FROM outage_notices WHERE site_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (site_id, after, limit),
            ).fetchall()
        notices = [
            {
                "notice_id": notice_id,
                "utility": utility,
                "scope": json.loads(scope),
                "starts_at": starts_at,
                "ends_at": ends_at,
                "reason": reason,
            }
            for _, notice_id, utility, scope, starts_at, ends_at, reason in rows
        ]
        return notices, rows[-1][0] if rows else after

    # -- queries for tests, the page and the statistics ----------------------------------

    def _select(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._conn.execute(sql, tuple(params))
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def readings(self, site_id: str | None = None) -> list[dict[str, Any]]:
        """Every stored reading (of one site), in key order, with its ``deliveries``."""
        rows = self._select(
            "SELECT * FROM readings WHERE ?1 IS NULL OR site_id = ?1 ORDER BY site_id, reading_id",
            (site_id,),
        )
        return [{**dict(row), "flags": json.loads(row["flags"])} for row in rows]

    def reading_deliveries(self, site_id: str, reading_id: str) -> int:
        """How many valid copies of a reading arrived (0: never)."""
        rows = self._select(
            "SELECT deliveries FROM readings WHERE site_id = ? AND reading_id = ?",
            (site_id, reading_id),
        )
        return int(rows[0][0]) if rows else 0

    def incidents(self, site_id: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """Stored incidents, latest change first: the item as last accepted plus
        ``site_id``, ``ticket_no``, ``deliveries`` and receive times."""
        rows = self._select(
            "SELECT site_id, ticket_no, deliveries, first_received_at, received_at, body "
            "FROM incidents WHERE ?1 IS NULL OR site_id = ?1 "
            "ORDER BY received_at DESC, ticket_no DESC LIMIT ?2",
            (site_id, limit),
        )
        return [
            {**json.loads(row["body"]), **{k: row[k] for k in row.keys() if k != "body"}}
            for row in rows
        ]

    def last_heartbeat(self, site_id: str) -> dict[str, Any] | None:
        """The site's last heartbeat body plus ``received_at`` (None: never)."""
        rows = self._select(
            "SELECT received_at, body FROM heartbeats WHERE site_id = ?", (site_id,)
        )
        if not rows:
            return None
        return {**json.loads(rows[0]["body"]), "received_at": rows[0]["received_at"]}

    def recent_requests(self, limit: int) -> list[dict[str, Any]]:
        """The request log, newest first."""
        rows = self._select(
            "SELECT at, method, path, site_id, status, items, fault, ms FROM requests "
            "ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [dict(row) for row in rows]

    def stats(self) -> dict[str, Any]:
        """Totals since the database was created (see the module docstring)."""
        counters = {name: 0 for name in COUNTER_NAMES}
        for name, value in self._select("SELECT name, value FROM counters"):
            if name in counters:
                counters[name] = value
        by_status = {
            str(status): count
            for status, count in self._select(
                "SELECT status, COUNT(*) FROM requests GROUP BY status ORDER BY status"
            )
        }
        faults = {
            fault: count
            for fault, count in self._select(
                "SELECT fault, COUNT(*) FROM requests WHERE fault IS NOT NULL "
                "GROUP BY fault ORDER BY fault"
            )
        }
        (incidents,) = self._select("SELECT COUNT(*) FROM incidents")[0]
        (updates,) = self._select("SELECT COUNT(*) FROM ticket_updates")[0]
        (notices,) = self._select("SELECT COUNT(*) FROM outage_notices")[0]
        accepted = counters["readings_accepted"]
        duplicate = counters["readings_duplicate"]
        return {
            "readings": {
                "stored": accepted,
                "deliveries": accepted + duplicate,
                "duplicate": duplicate,
                "rejected": counters["readings_rejected"],
            },
            "incidents": {
                "stored": incidents,
                "accepted": counters["incidents_accepted"],
                "stale": counters["incidents_stale"],
                "rejected": counters["incidents_rejected"],
            },
            "heartbeats": counters["heartbeats"],
            "ticket_updates": updates,
            "outage_notices": notices,
            "requests": {"total": sum(by_status.values()), "by_status": by_status},
            "faults_applied": faults,
        }
