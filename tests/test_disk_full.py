"""A full disk under the journal, for real: a small tmpfs (root only; skipped
otherwise). While space runs out the storage alarm comes, recorded while there is
still room; once the disk is full nothing more is acknowledged (503, health
degraded with the reason) and the gateway keeps running; once space returns, the
events refused meanwhile go in when resent, the alarm clears, every event
acknowledged is there exactly once and the journal passes its integrity check."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.site import GatewayProcess, Site, wait_for, write_site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
DISK_MB = 8
LOW_MB = 2
PAD = "x" * 1500  # ~1.5 KB per event: the disk fills in a few dozen batches


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _free_mb(folder: Path) -> float:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize / (1024 * 1024)


def _batch(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"fill-{n}-{i}", "kind": "test.fill", "payload": {"n": n, "pad": PAD}}
        for i in range(200)
    ]


def _send(site: Site, n: int) -> int:
    return httpx.post(
        f"{site.url}/api/v1/events",
        json={"events": _batch(n)},
        headers=site.headers("admin"),
        timeout=30,
    ).status_code


def _storage_alarm(site: Site) -> dict[str, Any] | None:
    answer = httpx.get(
        f"{site.url}/api/v1/alarms/storage-low:journal", headers=site.headers("guard")
    )
    return dict(answer.json()) if answer.status_code == 200 else None


def test_a_full_disk_alarms_refuses_and_recovers_without_loss(
    tmp_path: Path, small_disk: Path
) -> None:
    site = write_site(tmp_path / "site")  # the site file and the log stay off the small disk
    journal = small_disk / "journal.db"
    text = site.path.read_text(encoding="utf-8").replace(
        'path = "journal.db"', f'path = "{journal}"\ndisk_low_mb = {LOW_MB}'
    )
    site.path.write_text(text, encoding="utf-8")
    site.journal = journal
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        filler = small_disk / "filler"  # leave ~3.5 MB: above the alarm's line, then fill it
        filler.write_bytes(b"\0" * int((_free_mb(small_disk) - 3.5) * 1024 * 1024))
        acknowledged, refused = [], []
        n = 0
        while len(refused) < 3 and n < 200:
            status = _send(site, n)
            assert status in (200, 503), status
            (acknowledged if status == 200 else refused).append(n)
            n += 1
            if _free_mb(small_disk) < LOW_MB and not refused:
                wait_for(lambda: _storage_alarm(site), 10, "the storage alarm while room is left")
        assert refused, "the disk never filled"
        alarm = _storage_alarm(site)
        assert alarm is not None and alarm["priority"] == "P2" and alarm["active"]
        health = httpx.get(f"{site.url}/healthz").json()
        assert health["status"] == "degraded" and not health["journal"]["ok"]
        assert "full" in health["journal"]["error"], health
        assert gateway.proc.poll() is None, "the gateway keeps running"

        filler.unlink()  # the administrator frees space
        for batch in refused:
            assert _send(site, batch) == 200, "a resent batch goes in once space returns"
        wait_for(lambda: httpx.get(f"{site.url}/healthz").json()["journal"]["ok"], 10, "healthy")
        wait_for(
            lambda: (a := _storage_alarm(site)) is not None and not a["active"],
            15,
            "the storage alarm clears",
        )
        gateway.signal(15)
        assert gateway.wait(20) == 0
    finally:
        gateway.close()
    conn = sqlite3.connect(journal)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT id FROM events WHERE kind = 'test.fill'").fetchall()
    finally:
        conn.close()
    stored = [r[0] for r in rows]
    expected = {e["id"] for b in acknowledged + refused for e in _batch(b)}
    assert len(stored) == len(set(stored)), "nothing stored twice"
    assert set(stored) == expected, "every acknowledged event, and the resent ones, once"
