"""Service lifecycle: parts restarted after a crash, parallel shutdown within the
budget, clean exit on SIGTERM/SIGINT, start-up errors as exit code 2."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.app import GatewayService
from gateway.config import load_site_config
from gateway.errors import PartFailed
from gateway.journal.schema import LATEST_VERSION
from gateway.supervisor import PartState, Supervisor, backoff_delay
from tests.harness.site import GatewayProcess, write_site


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(attempt, base=0.5, cap=30) for attempt in range(40) for _ in range(5)]
    assert max(delays) <= 30
    assert len({round(d, 6) for d in delays}) > 150  # jittered, not a fixed schedule
    assert all(0 <= backoff_delay(0, base=0.5, cap=30) <= 0.5 for _ in range(100))


def test_crashing_part_is_restarted_others_keep_running() -> None:
    async def main() -> None:
        supervisor = Supervisor(backoff_base=0.01, backoff_cap=0.05)
        runs = {"flaky": 0, "steady": 0}

        async def flaky() -> None:
            runs["flaky"] += 1
            await asyncio.sleep(0.01)
            raise RuntimeError("device went away")

        async def steady() -> None:
            runs["steady"] += 1
            await asyncio.Event().wait()

        async def hopeless() -> None:
            raise PartFailed("serial port /dev/ttyUSB9 does not exist")

        supervisor.add("flaky", flaky)
        supervisor.add("steady", steady)
        supervisor.add("hopeless", hopeless)
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        await asyncio.sleep(0.5)
        health = supervisor.health()
        assert runs["flaky"] >= 5
        assert health["flaky"].restarts >= 4
        assert health["flaky"].last_error == "RuntimeError: device went away"
        assert health["flaky"].state in (PartState.RUNNING, PartState.RESTARTING)
        assert runs["steady"] == 1
        assert health["steady"].state is PartState.RUNNING
        assert health["hopeless"].state is PartState.FAILED
        assert "ttyUSB9" in (health["hopeless"].last_error or "")
        stop.set()
        await asyncio.wait_for(task, 2)
        assert supervisor.health()["steady"].state is PartState.STOPPED

    asyncio.run(main())


async def _seconds_to_stop(service: GatewayService) -> float:
    """Start the service, let it settle, stop it; how long the stop took."""
    task = asyncio.create_task(service.run())
    await asyncio.sleep(0.5)
    started = time.monotonic()
    service.stop.set()
    await asyncio.wait_for(task, 10)
    return time.monotonic() - started


def test_shutdown_closes_slow_parts_in_parallel_within_budget(tmp_path: Path) -> None:
    """Three parts that each need 1.5 s to close: in series 4.5 s, in parallel ~1.5 s."""
    site = write_site(tmp_path)
    config = load_site_config(site.path)
    closed: list[str] = []

    def slow_part(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.shield(asyncio.sleep(1.5))
                closed.append(name)

        return run

    parts = [(f"slow{i}", slow_part(f"slow{i}")) for i in range(3)]
    elapsed = asyncio.run(_seconds_to_stop(GatewayService(config, extra_parts=parts)))
    assert sorted(closed) == ["slow0", "slow1", "slow2"]
    assert elapsed < 3.0


def test_a_part_that_will_not_stop_does_not_hold_the_service(tmp_path: Path) -> None:
    site = write_site(tmp_path, extra="")
    config = load_site_config(site.path)

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.shield(asyncio.sleep(30))  # ignores the first cancel for 30 s

    service = GatewayService(config, extra_parts=[("stubborn", stubborn)])
    assert asyncio.run(_seconds_to_stop(service)) <= 5.5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_process_cleanly_within_5_s(tmp_path: Path, sig: int) -> None:
    site = write_site(tmp_path)
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        started = time.monotonic()
        gateway.signal(sig)
        assert gateway.wait(10) == 0, gateway.log()
        assert time.monotonic() - started < 5
    finally:
        gateway.close()
    conn = sqlite3.connect(site.journal)
    kinds = [row[0] for row in conn.execute("SELECT kind FROM events ORDER BY seq")]
    conn.close()
    assert kinds[0] == "gateway.started"
    assert kinds[-1] == "gateway.stopping"
    assert "gateway stopped" in gateway.log()


def _run(site_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(site_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if " INFO " not in line]


def test_port_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        site = write_site(tmp_path, port=holder.getsockname()[1])
        result = _run(site.path)
    assert result.returncode == 2
    assert _error_lines(result) == [
        f"api: cannot listen on 127.0.0.1:{site.port}: Address already in use"
    ]
    assert not site.journal.exists()


def test_corrupt_journal_exits_2_and_is_left_untouched(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    site.journal.write_bytes(b"garbage" * 1000)
    result = _run(site.path)
    assert result.returncode == 2
    [line] = _error_lines(result)
    assert line.startswith(f"journal {site.journal}: not an SQLite database")
    assert site.journal.read_bytes() == b"garbage" * 1000


def test_journal_from_a_newer_gateway_exits_2(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    conn = sqlite3.connect(site.journal)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name, applied_at)")
    future = LATEST_VERSION + 1
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 'later')", (future,))
    conn.commit()
    conn.close()
    before = site.journal.read_bytes()
    result = _run(site.path)
    assert result.returncode == 2
    [line] = _error_lines(result)
    assert f"schema version {future} is newer than this gateway knows ({LATEST_VERSION})" in line
    assert site.journal.read_bytes() == before


def test_unwritable_journal_path_exits_2(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    site = write_site(tmp_path)
    site.path.write_text(
        site.path.read_text().replace('path = "journal.db"', 'path = "blocker/journal.db"')
    )
    result = _run(site.path)
    assert result.returncode == 2
    [line] = _error_lines(result)
    assert line.startswith(f"journal {tmp_path}/blocker/journal.db: cannot create directory")


def test_bad_config_exits_2_naming_file_key_value(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    site.path.write_text(site.path.read_text().replace("heartbeat_s = 1", "heartbeat_s = -1"))
    result = _run(site.path)
    assert result.returncode == 2
    assert _error_lines(result) == [f"{site.path}: service.heartbeat_s: -1 must be greater than 0"]
    assert not site.journal.exists()


def test_missing_config_exits_2(tmp_path: Path) -> None:
    result = _run(tmp_path / "nope.toml")
    assert result.returncode == 2
    assert _error_lines(result) == [f"{tmp_path}/nope.toml: no such file"]
