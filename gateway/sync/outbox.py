"""The outbox: every item central has not yet acknowledged, one row each.

All functions here take the writer's (or a reader's) connection and run inside
``Journal.write`` / ``Journal.query``, so queuing an item, recording central's
answer and moving a refused item to the dead letters each commit atomically
with whatever they go with. The rules that make sync lose nothing and count
nothing twice live here:

* a row leaves the outbox only in the commit that records central's answer
  for it (``settle``) — a crash before that re-sends, central de-duplicates;
* an incident is queued by revision: a newer revision replaces a queued older
  one, and settling an answer for revision 2 never removes a queued revision 3;
* nothing is dropped silently: refused items go to ``dead_letters`` with the
  error; thinning (``thin``) only ever removes raw interval readings of a
  period whose closing reading central already holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Status = Literal["accepted", "duplicate", "stale", "rejected"]

METER_READINGS = "meter-readings"
INCIDENTS = "incidents"
HEARTBEAT = "heartbeat"

PRIORITY: tuple[str, ...] = (INCIDENTS, HEARTBEAT, METER_READINGS)
"""Send order between streams: a fire ticket never waits behind a week of readings."""


@dataclass(frozen=True)
class NewItem:
    """An item to queue for central."""

    stream: str
    item_id: str
    body: str
    revision: int = 0
    keep: bool = False
    meter: str | None = None
    read_at: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    """A queued item as read back for sending."""

    seq: int
    stream: str
    item_id: str
    revision: int
    body: str
    keep: bool = False


@dataclass(frozen=True)
class ItemResult:
    """Central's answer for one item."""

    item_id: str
    status: Status
    error: str | None = None
    ticket_no: str | None = None


_ENQUEUE = """
INSERT INTO outbox (stream, item_id, revision, body, bytes, keep, meter, read_at, queued_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (stream, item_id) WHERE stream != 'meter-readings' DO UPDATE SET
    revision = excluded.revision, body = excluded.body, bytes = excluded.bytes,
    keep = excluded.keep, queued_at = excluded.queued_at
WHERE excluded.revision > outbox.revision
"""


def enqueue(conn: sqlite3.Connection, items: Iterable[NewItem], now: str) -> None:
    """Queue items; a queued incident (or record) is replaced only by a newer
    revision. Meter readings are not checked against the queue (the feeder
    queues each once; a second copy would only be answered ``duplicate``)."""
    conn.executemany(
        _ENQUEUE,
        [
            (
                i.stream,
                i.item_id,
                i.revision,
                i.body,
                len(i.body.encode("utf-8")),
                int(i.keep),
                i.meter,
                i.read_at,
                now,
            )
            for i in items
        ],
    )


def next_batch(
    conn: sqlite3.Connection, stream: str, after_seq: int, max_items: int, max_bytes: int
) -> list[OutboxItem]:
    """The oldest items of a stream after ``after_seq``, at most ``max_items``
    and ``max_bytes`` of bodies (always at least one item, so a single large
    item still goes out and central's 413 can move it to the dead letters)."""
    rows = conn.execute(
        "SELECT seq, item_id, revision, body, bytes, keep FROM outbox "
        "WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
        (stream, after_seq, max_items),
    ).fetchall()
    batch: list[OutboxItem] = []
    total = 0
    for seq, item_id, revision, body, size, keep in rows:
        total += size + 1  # the comma between items
        if batch and total > max_bytes:
            break
        batch.append(OutboxItem(seq, stream, item_id, revision, body, bool(keep)))
    return batch


def settle(
    conn: sqlite3.Connection,
    stream: str,
    sent: Sequence[OutboxItem],
    results: Sequence[ItemResult],
    now: str,
) -> dict[str, int]:
    """Record central's answers for a sent batch; return counts by status.

    Items central answered for leave the outbox (``rejected`` ones into the
    dead letters with central's error); items it did not answer for stay and
    are sent again. Counts and the time of success go to ``sync_streams``.
    """
    by_id = {item.item_id: item for item in sent}
    counts: dict[str, int] = {"accepted": 0, "duplicate": 0, "stale": 0, "rejected": 0}
    done: list[tuple[int, int]] = []
    closes: list[tuple[int, int]] = []
    rejected: list[tuple[OutboxItem, str]] = []
    tickets: list[tuple[str, str]] = []
    for result in results:
        item = by_id.pop(result.item_id, None)
        if item is None:  # an answer for something not sent in this batch: ignore
            continue
        counts[result.status] += 1
        if result.status == "rejected":
            rejected.append((item, result.error or "rejected by central (no reason given)"))
        else:
            done.append((item.seq, item.revision))
            if item.keep and stream == METER_READINGS:
                closes.append((item.seq, item.revision))
        if result.ticket_no:
            tickets.append((item.item_id, result.ticket_no))
    if rejected:
        move_to_dead_letters(conn, rejected, now)
    _remember_delivered_closes(conn, closes)
    conn.executemany("DELETE FROM outbox WHERE seq = ? AND revision = ?", done)
    conn.executemany(
        "INSERT INTO central_tickets (incident_id, ticket_no) VALUES (?, ?) "
        "ON CONFLICT (incident_id) DO UPDATE SET ticket_no = excluded.ticket_no",
        tickets,
    )
    conn.execute(
        "INSERT INTO sync_streams (stream, accepted, duplicate, stale, rejected, last_success) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE SET "
        "accepted = accepted + excluded.accepted, duplicate = duplicate + excluded.duplicate, "
        "stale = stale + excluded.stale, rejected = rejected + excluded.rejected, "
        "last_success = excluded.last_success",
        (stream, counts["accepted"], counts["duplicate"], counts["stale"], counts["rejected"], now),
    )
    return counts


def _remember_delivered_closes(conn: sqlite3.Connection, closes: Sequence[tuple[int, int]]) -> None:
    """Note the period closes central now holds: raw readings of the period
    they close may be thinned when the disk budget runs out (``thin``)."""
    conn.executemany(
        "INSERT OR IGNORE INTO delivered_closes (meter, boundary) SELECT meter, read_at "
        "FROM outbox WHERE seq = ? AND revision = ? AND meter IS NOT NULL",
        closes,
    )


def move_to_dead_letters(
    conn: sqlite3.Connection, items: Sequence[tuple[OutboxItem, str]], now: str
) -> None:
    """Move refused items from the outbox to the dead letters, with the error."""
    conn.executemany(
        "INSERT INTO dead_letters (stream, item_id, revision, body, keep, meter, read_at, "
        "error, failed_at) SELECT stream, item_id, revision, body, keep, meter, read_at, ?, ? "
        "FROM outbox WHERE seq = ? AND revision = ?",
        [(error, now, item.seq, item.revision) for item, error in items],
    )
    conn.executemany(
        "DELETE FROM outbox WHERE seq = ? AND revision = ?",
        [(item.seq, item.revision) for item, _ in items],
    )


@dataclass(frozen=True)
class Backlog:
    """What one stream still owes central."""

    items: int
    bytes: int
    oldest_queued_at: str | None


def backlog(conn: sqlite3.Connection) -> dict[str, Backlog]:
    """Per stream: items, bytes of bodies, and when the oldest was queued."""
    out: dict[str, Backlog] = {}
    for stream, items, size in conn.execute(
        "SELECT stream, count(*), coalesce(sum(bytes), 0) FROM outbox GROUP BY stream"
    ):
        oldest = conn.execute(
            "SELECT queued_at FROM outbox WHERE stream = ? ORDER BY seq LIMIT 1", (stream,)
        ).fetchone()
        out[stream] = Backlog(int(items), int(size), oldest[0] if oldest else None)
    return out


def thin(conn: sqlite3.Connection, bytes_to_free: int, chunk: int = 2000) -> tuple[int, int]:
    """Drop the oldest raw interval readings whose period's closing reading
    central already holds, until ``bytes_to_free`` are freed or none is left.

    Returns (items, bytes) removed. Period closes, incidents and records are
    never touched (``keep = 1``); the readings stay in the journal's events,
    so thinning costs central the detail of a closed period, never a bill.
    """
    freed = items = 0
    while freed < bytes_to_free:
        rows = conn.execute(
            "SELECT o.seq, o.bytes FROM outbox o "
            "WHERE o.stream = ? AND o.keep = 0 AND EXISTS ("
            "  SELECT 1 FROM delivered_closes d WHERE d.meter = o.meter AND d.boundary >= o.read_at"
            ") ORDER BY o.seq LIMIT ?",
            (METER_READINGS, chunk),
        ).fetchall()
        if not rows:
            break
        take = []
        for seq, size in rows:
            take.append((seq,))
            freed += size
            if freed >= bytes_to_free:
                break
        conn.executemany("DELETE FROM outbox WHERE seq = ?", take)
        items += len(take)
    if items:
        conn.execute(
            "INSERT INTO sync_streams (stream, thinned) VALUES (?, ?) "
            "ON CONFLICT (stream) DO UPDATE SET thinned = thinned + excluded.thinned",
            (METER_READINGS, items),
        )
    return items, freed


def record_error(conn: sqlite3.Connection, stream: str, error: str, now: str) -> None:
    conn.execute(
        "INSERT INTO sync_streams (stream, last_error, last_error_at) VALUES (?, ?, ?) "
        "ON CONFLICT (stream) DO UPDATE SET last_error = excluded.last_error, "
        "last_error_at = excluded.last_error_at",
        (stream, error, now),
    )


@dataclass(frozen=True)
class DeadLetter:
    """An item central refused, kept with its error for a supervisor."""

    id: int
    stream: str
    item_id: str
    revision: int
    body: str
    error: str
    failed_at: str
    requeued_at: str | None
    requeued_by: str | None


def dead_letters(
    conn: sqlite3.Connection, *, include_requeued: bool = False, limit: int = 500
) -> list[DeadLetter]:
    rows = conn.execute(
        "SELECT id, stream, item_id, revision, body, error, failed_at, requeued_at, requeued_by "
        "FROM dead_letters WHERE ? OR requeued_at IS NULL ORDER BY id DESC LIMIT ?",
        (include_requeued, limit),
    ).fetchall()
    return [DeadLetter(*row) for row in rows]


def count_dead_letters(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM dead_letters WHERE requeued_at IS NULL").fetchone()
    return int(row[0])


class RequeueRefused(ValueError):
    """The dead letter does not exist, is already re-queued, or the fix is unusable."""


def requeue(
    conn: sqlite3.Connection, letter_id: int, body: str | None, who: str, now: str
) -> DeadLetter:
    """Put a dead letter back in the outbox, optionally with a corrected body.

    The corrected body is the supervisor's fix (e.g. a value typed wrongly);
    the caller checks it keeps the item's id. A re-queued letter stays listed
    (with who and when) as the record of the fix.
    """
    row = conn.execute(
        "SELECT id, stream, item_id, revision, body, error, failed_at, requeued_at, "
        "requeued_by, keep, meter, read_at FROM dead_letters WHERE id = ?",
        (letter_id,),
    ).fetchone()
    if row is None:
        raise RequeueRefused(f"dead letter {letter_id} does not exist")
    letter = DeadLetter(*row[:9])
    if letter.requeued_at is not None:
        raise RequeueRefused(
            f"dead letter {letter_id} was already re-queued by {letter.requeued_by} "
            f"at {letter.requeued_at}"
        )
    keep, meter, read_at = row[9:]
    queued = conn.execute(
        "SELECT revision FROM outbox WHERE stream = ? AND item_id = ? AND stream != ?",
        (letter.stream, letter.item_id, METER_READINGS),
    ).fetchone()
    if queued is not None:
        raise RequeueRefused(
            f"dead letter {letter_id}: {letter.item_id} is already queued again "
            f"(revision {queued[0]}); nothing to re-queue"
        )
    enqueue(
        conn,
        [
            NewItem(
                letter.stream,
                letter.item_id,
                letter.body if body is None else body,
                letter.revision,
                bool(keep),
                meter,
                read_at,
            )
        ],
        now,
    )
    conn.execute(
        "UPDATE dead_letters SET requeued_at = ?, requeued_by = ? WHERE id = ?",
        (now, who, letter_id),
    )
    return letter
