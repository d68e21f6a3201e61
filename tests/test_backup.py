"""Journal backup and restore with the real CLI and a running gateway: a backup
taken under load is whole and consistent; a restore refuses while the gateway
runs, keeps the journal it replaces, and the gateway starts on the restored
one; one gateway per journal; an upgrade backs the journal up before migrating
(the way back); bad backups are refused with the reason."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from gateway.events import Event
from gateway.journal import schema
from gateway.journal.backup import describe
from gateway.journal.store import Journal
from tests.harness.site import GatewayProcess, Site, running, write_site


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60
    )


def submit_until(site: Site, stop: threading.Event) -> None:
    """Events through the API as fast as one client goes, until told to stop."""
    with httpx.Client(base_url=site.url, headers=site.headers("admin"), timeout=10) as client:
        n = 0
        while not stop.is_set():
            batch = [
                {"kind": "test.load", "device": "D-1", "payload": {"n": n + i}} for i in range(50)
            ]
            client.post("/api/v1/events", json={"events": batch}).raise_for_status()
            n += 50


def seqs(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM events").fetchone()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


def test_backup_under_load_and_restore_of_a_stopped_gateway(tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    backup_file = tmp_path / "backups" / "journal.db"
    backup_file.parent.mkdir()
    with running(site) as gateway:
        stop = threading.Event()
        load = threading.Thread(target=submit_until, args=(site, stop))
        load.start()
        try:
            saved = cli("backup", "-c", str(site.path), str(backup_file))
        finally:
            stop.set()
            load.join()
        assert saved.returncode == 0, saved.stderr
        assert "integrity ok" in saved.stdout and f"schema {schema.LATEST_VERSION}" in saved.stdout
        count, last = seqs(backup_file)
        assert count > 0 and count == last, "a consistent moment: no gap, nothing torn"
        # into a folder: a dated file
        dated = cli("backup", "-c", str(site.path), str(backup_file.parent))
        assert dated.returncode == 0, dated.stderr
        assert len(list(backup_file.parent.glob("journal-*.db"))) == 1
        # restore refuses while the gateway runs, and changes nothing
        before = seqs(site.journal)
        refused = cli("restore", "-c", str(site.path), str(backup_file))
        assert refused.returncode == 2
        assert "in use by another gateway" in refused.stderr, refused.stderr
        assert seqs(site.journal)[0] >= before[0]
        gateway.signal(15)
        assert gateway.wait(15) == 0
    after_stop = seqs(site.journal)
    assert after_stop[0] > count
    restored = cli("restore", "-c", str(site.path), str(backup_file))
    assert restored.returncode == 0, restored.stderr
    assert seqs(site.journal) == (count, last)
    [kept] = list(site.journal.parent.glob("journal.db.replaced-*"))
    assert seqs(kept) == after_stop, "the replaced journal is kept whole"
    with running(site):
        events = httpx.get(
            f"{site.url}/api/v1/events?kind=test.load&limit=1000", headers=site.headers("admin")
        )
        assert events.status_code == 200


def test_one_gateway_per_journal(tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    with running(site):
        second = write_site(tmp_path / "second")
        text = second.path.read_text(encoding="utf-8").replace(
            'path = "journal.db"', f'path = "{site.journal}"'
        )
        second.path.write_text(text, encoding="utf-8")
        other = GatewayProcess(second)
        try:
            assert other.wait(20) == 2
            assert "in use by another gateway (pid" in other.log()
        finally:
            other.close()


def test_an_upgrade_backs_the_journal_up_before_migrating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    older = schema.LATEST_VERSION - 1
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:-1])
        conn = sqlite3.connect(path, isolation_level=None)
        schema.migrate(conn)
        conn.execute(
            "INSERT INTO events (id, kind, received_at, payload) "
            "VALUES ('e1', 'test.old', '2026-11-01T00:00:00+00:00', '{}')"
        )
        conn.close()

    async def upgrade() -> None:
        journal = await Journal.open(path)
        await journal.submit(Event("test.new", None, {}))
        await journal.close()

    asyncio.run(upgrade())
    saved = describe(Path(f"{path}.pre-v{schema.LATEST_VERSION}.bak"))
    assert (saved.schema_version, saved.last_seq) == (older, 1)
    assert describe(path).schema_version == schema.LATEST_VERSION
    # rolling back: the old version's backup goes back in place
    site = write_site(tmp_path / "site")
    back = cli("restore", "-c", str(site.path), str(saved.path))
    assert back.returncode == 0, back.stderr
    assert describe(site.journal).schema_version == older


def test_bad_backups_are_refused_with_the_reason(tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    answer = cli("restore", "-c", str(site.path), str(junk))
    assert answer.returncode == 2 and "not a gateway journal" in answer.stderr
    missing = cli("restore", "-c", str(site.path), str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    future = tmp_path / "future.db"
    conn = sqlite3.connect(future, isolation_level=None)
    schema.migrate(conn)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'later')")
    conn.close()
    newer = cli("restore", "-c", str(site.path), str(future))
    assert newer.returncode == 2 and "newer than this gateway knows" in newer.stderr
    assert not site.journal.exists(), "nothing was put in place"
    nowhere = cli("backup", "-c", str(site.path), str(tmp_path / "out.db"))
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr
