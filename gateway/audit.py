"""The append-only audit trail: who did what, to what, why, and when.

Rows go through the journal's single writer, in the same group commit as the
events they explain; triggers in the schema refuse UPDATE and DELETE.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from gateway.auth import Principal
from gateway.clock import to_rfc3339, utc_now
from gateway.journal.store import Journal


async def record_audit(
    journal: Journal,
    who: Principal,
    action: str,
    target: str,
    *,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Write one audit row (durable on return); returns its sequence number."""
    return await journal.write(
        lambda conn: insert_audit(conn, who, action, target, reason=reason, detail=detail)
    )


def insert_audit(
    conn: sqlite3.Connection,
    who: Principal,
    action: str,
    target: str,
    *,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Write one audit row inside a ``Journal.write`` operation, so the action and
    its record commit together (or not at all)."""
    cursor = conn.execute(
        "INSERT INTO audit (at, who, role, action, target, reason, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            to_rfc3339(utc_now()),
            who.name,
            who.role,
            action,
            target,
            reason,
            json.dumps(dict(detail or {}), ensure_ascii=False),
        ),
    )
    return int(cursor.lastrowid or 0)


def recent_audit(
    conn: sqlite3.Connection, *, limit: int, before: int | None
) -> list[dict[str, Any]]:
    """The newest audit rows first, paged by ``before`` (a seq)."""
    rows = conn.execute(
        "SELECT seq, at, who, role, action, target, reason, detail FROM audit "
        "WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        (before if before is not None else 2**63 - 1, limit),
    ).fetchall()
    return [{**dict(row), "detail": json.loads(row["detail"])} for row in rows]
