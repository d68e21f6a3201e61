"""Read-side queries over the journal (run on the journal's read pool).

Paging is by ``seq`` (commit order), not by offset: a cursor stays valid while
new events arrive, and each page is an index range scan.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.clock import to_rfc3339


@dataclass(frozen=True)
class EventFilter:
    """What the caller wants; every field optional. Times are aware datetimes."""

    kind: str | None = None
    device: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    order: Literal["asc", "desc"] = "desc"
    cursor: int | None = None
    limit: int = 100


def query_events(conn: sqlite3.Connection, flt: EventFilter) -> list[dict[str, Any]]:
    """Events matching ``flt``; newest first for ``desc``, paged after/before ``cursor``."""
    clauses: list[str] = []
    params: list[Any] = []
    if flt.kind is not None:
        clauses.append("kind = ?")
        params.append(flt.kind)
    if flt.device is not None:
        clauses.append("device = ?")
        params.append(flt.device)
    if flt.since is not None:
        clauses.append("received_at >= ?")
        params.append(to_rfc3339(flt.since.astimezone(UTC)))
    if flt.until is not None:
        clauses.append("received_at < ?")
        params.append(to_rfc3339(flt.until.astimezone(UTC)))
    if flt.cursor is not None:
        clauses.append("seq > ?" if flt.order == "asc" else "seq < ?")
        params.append(flt.cursor)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    direction = "ASC" if flt.order == "asc" else "DESC"
    # Only fixed clause texts are joined here; every value is a bound parameter.
    columns = "seq, id, kind, device, device_time, received_at, payload"
    sql = f"SELECT {columns} FROM events {where} ORDER BY seq {direction} LIMIT ?"  # noqa: S608
    params.append(flt.limit)
    return [
        {**dict(row), "payload": json.loads(row["payload"])}
        for row in conn.execute(sql, params).fetchall()
    ]


def count_events(conn: sqlite3.Connection) -> int:
    """How many events the journal holds (for the demo's summary)."""
    return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
