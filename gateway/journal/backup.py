"""Journal backup and restore, and the lock that keeps one gateway per journal.

A backup is taken with SQLite's online backup API, so the gateway keeps running
and the copy is one consistent moment (WAL included) — copying the file with
``cp`` while the writer commits can give a torn database. The copy is written
beside its destination, checked (``PRAGMA integrity_check``) and then renamed,
so a backup that exists is a whole one.

A restore replaces the journal of a *stopped* gateway: the lock file tells a
running one (an OS lock, released even by kill -9). The journal it replaces is
moved aside, never deleted: a restore can itself be undone.

The same backup runs before a migration to a newer schema (``pre-upgrade``):
rolling back an upgrade is installing the old version and restoring that file
(docs/install.md).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from gateway.errors import JournalError, JournalOpenError

_PAGES_PER_STEP = 4096  # ~16 MiB a step: the writer is never held up for long


class JournalInUse(JournalOpenError):
    """Another gateway process holds the journal."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    size_bytes: int
    schema_version: int
    last_seq: int


class JournalLock:
    """An exclusive lock on ``<journal>.lock`` for as long as a gateway uses the journal."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def acquire(cls, journal: Path) -> JournalLock:
        """Take the lock, or raise JournalInUse naming the process that holds it."""
        path = Path(f"{journal}.lock")
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise JournalInUse(
                f"journal {journal}: in use by another gateway (pid {holder}); "
                "stop it first (systemctl stop site-gateway)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def backup(source: Path, dest: Path) -> BackupInfo:
    """Copy the journal at ``source`` to ``dest`` (a file, or a directory to put a
    dated file in) while it may be in use; return what was copied."""
    if dest.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        dest = dest / f"{source.stem}-{stamp}.db"
    if not source.is_file():
        raise JournalError(f"journal {source}: does not exist")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(partial)
        try:
            src.backup(out, pages=_PAGES_PER_STEP)
            out.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            _check(out, partial)
        finally:
            out.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise JournalError(f"backup of {source} to {dest} failed: {exc}") from exc
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    os.replace(partial, dest)
    _fsync_dir(dest.parent)
    return describe(dest)


def restore(source: Path, journal: Path, known_version: int) -> tuple[BackupInfo, Path | None]:
    """Put the backup at ``source`` in place of ``journal`` (its gateway stopped);
    returns what was restored and where the replaced journal was moved."""
    info = describe(source)
    if info.schema_version > known_version:
        raise JournalError(
            f"backup {source}: schema version {info.schema_version} is newer than this "
            f"gateway knows ({known_version}); restore it with the version that made it"
        )
    lock = JournalLock.acquire(journal)
    try:
        moved: Path | None = None
        if journal.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            moved = journal.with_name(f"{journal.name}.replaced-{stamp}")
            # A stopped gateway has checkpointed its WAL, but keep the set together anyway.
            for suffix in ("-wal", "-shm", ""):
                part = Path(f"{journal}{suffix}")
                if part.exists():
                    os.replace(part, Path(f"{moved}{suffix}"))
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            out = sqlite3.connect(journal)
            try:
                src.backup(out, pages=_PAGES_PER_STEP)
                _check(out, journal)
            finally:
                out.close()
        finally:
            src.close()
        _fsync_dir(journal.parent)
    finally:
        lock.release()
    return describe(journal), moved


def describe(path: Path) -> BackupInfo:
    """Schema version, last event and size of a journal file (JournalOpenError if unusable)."""
    if not path.is_file():
        raise JournalOpenError(f"{path}: does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            schema_version = int(version.fetchone()[0])
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise JournalOpenError(f"{path}: not a gateway journal: {exc}") from exc
    return BackupInfo(path, path.stat().st_size, schema_version, int(last))


def _check(conn: sqlite3.Connection, path: Path) -> None:
    result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    if result != "ok":
        raise sqlite3.DatabaseError(f"{path}: integrity check failed: {result}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry), as the journal's own commits are."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
