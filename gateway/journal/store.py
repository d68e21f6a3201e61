"""The event journal: one SQLite file, one writer, group commit.

Invariants (../shared/DESIGN.md): an event is durable before anyone acts on
it; one task owns the write connection; thousands of events a second cost a
few fsyncs. The design follows datasette's single-writer pattern:

* producers on the asyncio loop append to a pending list and await a future;
* one writer **thread** swaps the whole pending list out, inserts it with
  multi-row INSERTs inside one ``BEGIN IMMEDIATE`` … ``COMMIT`` (WAL,
  ``synchronous=FULL``), then resolves every future of the group with a single
  ``call_soon_threadsafe``;
* small commits are **paced** (Kafka's ``linger.ms`` and ``batch.size``): a
  group of fewer than ``PACE_BELOW`` items starts at most ``commit_interval_s``
  (default 10 ms) after the previous commit started. A writer that was idle
  commits at once, so a lone event waits for nothing, and a group that is
  already large has nothing to gain from waiting (the MQTT intake hands over
  hundreds of messages at a time, and waits for each commit before taking
  more: pacing even its occasional batch of a dozen slowed it). Under steady
  trickling load (meters polled back to back) what arrives meanwhile joins
  the next group instead of costing its own fsync:
  unpaced, bench/modbus_poll.py ran ~550 commits a second of one or two polls
  each, and pacing took 20–30 % off its CPU per read. It also bounds the
  fsyncs a flash card (a Pi's SD, a mini-PC's eMMC) has to endure;
* the pending list is bounded: when it is full, producers wait (back-pressure,
  never memory growth);
* reads use their own read-only connections on a small thread pool, so a slow
  query never blocks the writer or the event loop.

``write()`` lets other parts (audit, later the outbox and alarm state) run a
function inside the writer's next transaction, so there is still only one
writer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from gateway.errors import JournalClosed, JournalError, JournalOpenError, JournalWriteError
from gateway.events import Event
from gateway.journal import schema
from gateway.journal.backup import JournalLock, backup

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[str, str, str | None, str | None, str, str]
CommitHook = Callable[[int, float], None]
"""Called in the writer thread after each commit with (events stored, seconds)."""

_INSERT_HEAD = (
    "INSERT OR IGNORE INTO events (id, kind, device, device_time, received_at, payload) VALUES "
)
_ROW_PLACES = "(?, ?, ?, ?, ?, ?)"
_INSERT = _INSERT_HEAD + _ROW_PLACES
_CHUNK = 64
_INSERT_CHUNK = _INSERT_HEAD + ", ".join([_ROW_PLACES] * _CHUNK)
_SQLITE_MAGIC = b"SQLite format 3\x00"
PACE_BELOW = 8
"""Groups with fewer events and operations than this are paced (module docstring)."""


def insert_events(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Insert events from inside a ``Journal.write`` operation (same transaction
    as the state it goes with); an id already stored is ignored."""
    _insert_rows(conn, [event.as_row() for event in events])


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    """Insert rows 64 to a statement (the rest one by one); ids already stored are ignored.

    Python's sqlite3 lets go of the GIL around every step, and ``executemany``
    steps once per row: with the event loop and paho's thread busy, the writer
    queued for the GIL again after each of a group's hundreds of rows, and the
    intake waiting for that commit queued behind it."""
    full = len(rows) - len(rows) % _CHUNK
    for start in range(0, full, _CHUNK):
        chunk = rows[start : start + _CHUNK]
        conn.execute(_INSERT_CHUNK, [value for row in chunk for value in row])
    if full < len(rows):
        conn.executemany(_INSERT, rows[full:])


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _check_location(path: Path) -> None:
    """Refuse, without creating or changing anything, a path we cannot use."""
    if path.exists():
        if not path.is_file():
            raise JournalOpenError(f"journal {path}: exists and is not a regular file")
        with path.open("rb") as handle:
            header = handle.read(16)
        if header and header != _SQLITE_MAGIC:
            raise JournalOpenError(
                f"journal {path}: not an SQLite database (corrupt or a different file); "
                "left untouched — restore a backup or point 'journal.path' elsewhere"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise JournalOpenError(f"journal {path}: file is not readable and writable")
        return
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalOpenError(
            f"journal {path}: cannot create directory {parent}: {exc.strerror}"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JournalOpenError(f"journal {path}: directory {parent} is not writable")


def open_write_connection(path: Path) -> tuple[sqlite3.Connection, JournalLock]:
    """Lock, open (creating if needed) and migrate the journal; the connection that
    writes and the lock to hold while it does.

    Raises JournalOpenError for an unusable path, a corrupt file, a schema newer
    than this gateway, or a journal another gateway holds, having changed nothing
    on disk. Before migrating an existing journal to a newer schema it takes a
    backup beside it (``<journal>.pre-v<N>.bak``): the way back from an upgrade.
    """
    path = Path(path)
    _check_location(path)
    lock = JournalLock.acquire(path)
    try:
        return _open_locked(path), lock
    except BaseException:
        lock.release()
        raise


def _open_locked(path: Path) -> sqlite3.Connection:
    existed = path.exists()
    try:
        conn = _connect(path)
    except sqlite3.Error as exc:
        raise JournalOpenError(f"journal {path}: cannot open: {exc}") from exc
    try:
        version = schema.current_version(conn)
        if version > schema.LATEST_VERSION:
            raise JournalOpenError(
                f"journal {path}: schema version {version} is newer than this gateway "
                f"knows ({schema.LATEST_VERSION}); upgrade the gateway or restore the backup "
                "taken before the upgrade"
            )
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        conn.execute("PRAGMA synchronous = FULL")
        # A larger page cache keeps the scattered (device, seq) index pages hot:
        # group commits then rewrite fewer pages (measured by bench/ingest.py).
        conn.execute("PRAGMA cache_size = -16384")
        # Checkpoint every 32 MiB of WAL instead of 4 MiB: each checkpoint is an fsync
        # of the database file in the writer thread (+10 % ingest, bench/ingest.py).
        conn.execute("PRAGMA wal_autocheckpoint = 8192")
        if 0 < version < schema.LATEST_VERSION:
            _backup_before_upgrade(path, version)
        applied = schema.migrate(conn)
    except JournalOpenError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        if not existed:
            _remove_new_file(path)
        raise JournalOpenError(f"journal {path}: unusable SQLite file: {exc}") from exc
    if applied:
        log.info("journal migrated path=%s versions=%s", path, applied)
    return conn


def _backup_before_upgrade(path: Path, version: int) -> None:
    target = Path(f"{path}.pre-v{schema.LATEST_VERSION}.bak")
    try:
        backup(path, target)
    except (JournalError, OSError) as exc:
        raise JournalOpenError(
            f"journal {path}: not migrated from schema {version} to {schema.LATEST_VERSION}: "
            f"the backup before the upgrade failed ({exc}); free space beside the journal"
        ) from exc
    log.info("journal backed up before upgrade path=%s backup=%s", path, target)


def _remove_new_file(path: Path) -> None:
    """Remove only the files we ourselves just created for a journal that failed."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class _Op:
    """A function to run in the writer's transaction and the future awaiting it."""

    __slots__ = ("error", "fn", "future", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.fn = fn
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


class Journal:
    """The durable event journal of one site (see module docstring).

    Use ``await Journal.open(path)`` from the event loop, ``submit()`` events,
    ``query()`` to read, and ``close()`` to drain and stop.
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        max_pending: int,
        on_commit: CommitHook | None,
        lock: JournalLock | None = None,
        commit_interval_s: float = 0.0,
    ) -> None:
        self.path = path
        self._commit_interval = commit_interval_s
        self._lock = lock
        self._conn = conn
        self._loop = loop
        self._max_pending = max_pending
        self._on_commit = on_commit
        self._cond = threading.Condition()
        self._rows: list[Row] = []
        self._waiters: list[tuple[asyncio.Future[None], int]] = []
        self._ops: list[_Op] = []
        self._in_flight = 0
        self._space = asyncio.Event()
        self._space.set()
        self._committed = asyncio.Event()
        self._accepting = True
        self._stopping = False
        self._writer_idle = False
        self._closed = False
        self._last_seq = self._max_seq()
        self.events_committed = 0
        self.commit_failures = 0
        self.last_commit_error: str | None = None
        """Why the latest commit failed (e.g. a full disk); None once one succeeds."""
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._read_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="journal-read")
        self._thread = threading.Thread(target=self._writer_loop, name="journal-writer")
        self._thread.start()

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        max_pending: int = 20_000,
        on_commit: CommitHook | None = None,
        commit_interval_s: float = 0.010,
    ) -> Journal:
        """Open (create, migrate) the journal and start its writer thread."""
        path = Path(path)
        conn, lock = await asyncio.to_thread(open_write_connection, path)
        return cls(
            path,
            conn,
            asyncio.get_running_loop(),
            max_pending=max_pending,
            on_commit=on_commit,
            lock=lock,
            commit_interval_s=commit_interval_s,
        )

    # ---- intake ---------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Events and operations handed in but not yet committed."""
        return self._in_flight

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def submit(self, event: Event) -> None:
        """Hand one event to the writer and return once it is committed.

        Submitting an id that is already stored is not an error: the event is
        durable either way and is stored once. (The hot path of every
        adapter, so it is written out rather than delegated.)
        """
        row = event.as_row()
        if not self._accepting or self._in_flight >= self._max_pending:
            await self._reserve(1)
        else:
            self._in_flight += 1
        future: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            self._rows.append(row)
            self._waiters.append((future, 1))
            if self._writer_idle:
                self._cond.notify()
        await future

    async def submit_many(self, events: Sequence[Event]) -> None:
        """Hand several events over; return once all are committed (one future)."""
        count = len(events)
        if count == 0:
            return
        # Serialise here, not in the writer: a bad event fails its own
        # producer, never the group it would have been committed with.
        rows = [event.as_row() for event in events]
        await self._reserve(count)
        future: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            self._rows.extend(rows)
            self._waiters.append((future, count))
            if self._writer_idle:
                self._cond.notify()
        await future

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside the writer's next transaction; return its result.

        ``fn`` runs in the writer thread under a savepoint: if it raises, only
        its own changes are rolled back and the exception comes back here.
        Keep it short — the whole group waits for it.
        """
        await self._reserve(1)
        future: asyncio.Future[T] = self._loop.create_future()
        with self._cond:
            self._ops.append(_Op(fn, future))
            if self._writer_idle:
                self._cond.notify()
        return await future

    async def _reserve(self, count: int) -> None:
        if not self._accepting:
            raise JournalClosed(f"journal {self.path}: intake stopped (shutting down)")
        while self._in_flight and self._in_flight + count > self._max_pending:
            self._space.clear()
            await self._space.wait()
            if not self._accepting:
                raise JournalClosed(f"journal {self.path}: intake stopped (shutting down)")
        self._in_flight += count

    # ---- the writer thread ----------------------------------------------

    def _writer_loop(self) -> None:
        started = -self._commit_interval
        while True:
            with self._cond:
                while not (self._rows or self._ops or self._stopping):
                    self._writer_idle = True
                    self._cond.wait()
                self._writer_idle = False
                # Pacing (see module docstring): let the group fill until the
                # interval since the last commit's start is over. Producers do
                # not notify a busy writer, so only a stop cuts this short.
                pause = started + self._commit_interval - time.monotonic()
                small = len(self._rows) + len(self._ops) < PACE_BELOW
                if pause > 0 and small and not self._stopping:
                    self._cond.wait(pause)
                if not (self._rows or self._ops):
                    return
                rows, self._rows = self._rows, []
                waiters, self._waiters = self._waiters, []
                ops, self._ops = self._ops, []
            started = time.monotonic()
            error = self._commit(rows, ops)
            self._loop.call_soon_threadsafe(self._settle, waiters, ops, len(rows), error)

    def _commit(self, rows: list[Row], ops: list[_Op]) -> BaseException | None:
        started = time.perf_counter()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    _insert_rows(conn, rows)
                for op in ops:
                    self._run_op(conn, op)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.commit_failures += 1
            self.last_commit_error = str(exc)
            log.error(
                "journal commit failed path=%s events=%d ops=%d error=%s",
                self.path,
                len(rows),
                len(ops),
                exc,
            )
            return JournalWriteError(f"journal {self.path}: commit failed: {exc}")
        elapsed = time.perf_counter() - started
        self.last_commit_error = None
        # Count what was stored, including events inserted by write() operations
        # (meter readings) and not counting ids that were already there.
        last_seq = self._max_seq()
        stored, self._last_seq = last_seq - self._last_seq, last_seq
        self.events_committed += stored
        if self._on_commit is not None:
            self._on_commit(stored, elapsed)
        return None

    def _max_seq(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    @staticmethod
    def _run_op(conn: sqlite3.Connection, op: _Op) -> None:
        conn.execute("SAVEPOINT op")
        try:
            op.result = op.fn(conn)
        except Exception as exc:  # the op's own failure goes back to its caller
            conn.execute("ROLLBACK TO op")
            op.error = exc
        conn.execute("RELEASE op")

    def _settle(
        self,
        waiters: list[tuple[asyncio.Future[None], int]],
        ops: list[_Op],
        event_count: int,
        error: BaseException | None,
    ) -> None:
        """On the loop: resolve a committed (or failed) group's futures."""
        for future, _ in waiters:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        for op in ops:
            if op.future.done():
                continue
            failure = error or op.error
            if failure is None:
                op.future.set_result(op.result)
            else:
                op.future.set_exception(failure)
        self._in_flight -= event_count + len(ops)
        if self._in_flight < self._max_pending:
            self._space.set()
        if error is None:
            committed, self._committed = self._committed, asyncio.Event()
            committed.set()

    def commit_signal(self) -> asyncio.Event:
        """An event set at the next commit. Take it *before* reading, then wait on
        it: a commit in between is never missed (the alarm engine's wake-up)."""
        return self._committed

    # ---- reads ----------------------------------------------------------

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read-only connection in the read pool."""
        return await self._loop.run_in_executor(self._read_pool, self._read, fn)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, read_only=True)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._cond:
                self._readers.append(conn)
        return fn(conn)

    # ---- shutdown -------------------------------------------------------

    def stop_intake(self) -> None:
        """Refuse new submissions; what is already handed in is still committed."""
        self._accepting = False
        self._space.set()

    async def close(self, within_s: float = 5.0) -> None:
        """Stop intake, commit what is pending, stop the writer and close files.

        Safe to call twice (the service calls it again on every exit path)."""
        if self._closed:
            return
        self._closed = True
        self.stop_intake()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        await asyncio.wait_for(asyncio.to_thread(self._thread.join), within_s)
        await asyncio.sleep(0)  # let the last _settle callback run
        self._read_pool.shutdown(wait=True)
        for conn in self._readers:
            conn.close()
        self._conn.close()
        if self._lock is not None:
            self._lock.release()
        log.info("journal closed path=%s events_committed=%d", self.path, self.events_committed)
