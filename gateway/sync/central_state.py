"""What central told us: ticket numbers and states, planned outage notices,
and the cursors of the feeds they came from.

A pull's cursor is stored in the same commit as what the pull brought, so a
crash never skips an update nor applies one twice with a different outcome.
Each update also goes into the journal as an event, for the alarm engine and
the incident timeline.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.events import Event
from gateway.journal.store import insert_events


def get_cursor(conn: sqlite3.Connection, name: str, default: str = "") -> str:
    row = conn.execute("SELECT value FROM sync_cursors WHERE name = ?", (name,)).fetchone()
    return default if row is None else str(row[0])


def set_cursor(conn: sqlite3.Connection, name: str, value: str) -> None:
    conn.execute(
        "INSERT INTO sync_cursors (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def apply_ticket_updates(
    conn: sqlite3.Connection, updates: Sequence[Mapping[str, Any]], cursor: str
) -> None:
    """Store central's ticket updates (latest state per incident) and the cursor."""
    conn.executemany(
        "INSERT INTO central_tickets (incident_id, ticket_no, state, note, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (incident_id) DO UPDATE SET "
        "ticket_no = coalesce(excluded.ticket_no, ticket_no), state = excluded.state, "
        "note = excluded.note, updated_at = excluded.updated_at",
        [
            (u["incident_id"], u.get("ticket_no"), u.get("state"), u.get("note"), u.get("at"))
            for u in updates
        ],
    )
    insert_events(
        conn,
        [
            Event(
                "central.ticket_update",
                None,
                dict(u),
                id=f"ticket-update:{u.get('cursor') or cursor}:{u['incident_id']}",
            )
            for u in updates
        ],
    )
    set_cursor(conn, "ticket-updates", cursor)


def apply_outage_notices(
    conn: sqlite3.Connection, notices: Sequence[Mapping[str, Any]], cursor: str, now: str
) -> None:
    """Store planned outage notices (for the alarm engine) and the cursor."""
    store_outage_notices(conn, notices, now, "central.outage_notice")
    set_cursor(conn, "outage-notices", cursor)


def store_outage_notices(
    conn: sqlite3.Connection, notices: Sequence[Mapping[str, Any]], now: str, kind: str
) -> None:
    """Store notices (central's, or a supervisor's: ``kind`` says which) and
    journal each as an event of ``kind`` for the alarm engine."""
    conn.executemany(
        "INSERT INTO outage_notices (notice_id, utility, scope, starts_at, ends_at, reason, "
        "received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (notice_id) DO UPDATE SET "
        "utility = excluded.utility, scope = excluded.scope, starts_at = excluded.starts_at, "
        "ends_at = excluded.ends_at, reason = excluded.reason",
        [
            (
                n["notice_id"],
                n["utility"],
                json.dumps(list(n["scope"]), ensure_ascii=False),
                n["starts_at"],
                n["ends_at"],
                n.get("reason"),
                now,
            )
            for n in notices
        ],
    )
    # The id carries the notice's content, so a revised notice (same notice_id,
    # new window) is a new event the alarm engine sees, and a repeat is stored once.
    insert_events(
        conn,
        [
            Event(kind, None, dict(n), id=f"outage-notice:{n['notice_id']}:{_digest(n)}")
            for n in notices
        ],
    )


def _digest(notice: Mapping[str, Any]) -> str:
    text = json.dumps(dict(notice), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Ticket:
    incident_id: str
    ticket_no: str | None
    state: str | None
    note: str | None
    updated_at: str | None


def tickets(conn: sqlite3.Connection, incident_ids: Sequence[str] | None = None) -> list[Ticket]:
    if incident_ids is None:
        rows = conn.execute(
            "SELECT incident_id, ticket_no, state, note, updated_at FROM central_tickets "
            "ORDER BY rowid DESC LIMIT 500"
        ).fetchall()
    else:
        rows = [
            row
            for incident in incident_ids
            for row in conn.execute(
                "SELECT incident_id, ticket_no, state, note, updated_at FROM central_tickets "
                "WHERE incident_id = ?",
                (incident,),
            )
        ]
    return [Ticket(*row) for row in rows]


@dataclass(frozen=True)
class OutageNotice:
    notice_id: str
    utility: str
    scope: list[str]
    starts_at: str
    ends_at: str
    reason: str | None


def outage_notices(
    conn: sqlite3.Connection, *, ending_after: str | None = None
) -> list[OutageNotice]:
    """Planned outages, optionally only those not yet over (``ends_at`` after a time)."""
    rows = conn.execute(
        "SELECT notice_id, utility, scope, starts_at, ends_at, reason FROM outage_notices "
        "WHERE ? IS NULL OR ends_at > ? ORDER BY starts_at",
        (ending_after, ending_after),
    ).fetchall()
    return [OutageNotice(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in rows]
