"""The gateway under systemd's notify protocol, with a real notify socket: READY=1
once it serves, WATCHDOG=1 at half the watchdog time (each after a round trip
through the journal writer), STOPPING=1 on SIGTERM; nothing sent outside
systemd; a watchdog meant for another process is ignored."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from gateway.sdnotify import notify, watchdog_interval_s
from tests.harness.site import GatewayProcess, write_site


def receive_until(sock: socket.socket, want: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode("utf-8"))
        except TimeoutError:
            break
        if want in got[-1]:
            return got
    raise AssertionError(f"{want!r} not received in {timeout} s; got {got}")


def test_ready_watchdog_and_stopping_reach_systemds_socket(tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        gateway = GatewayProcess(site, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        try:
            first = receive_until(sock, "READY=1", 20)
            assert "STATUS=serving http://127.0.0.1:" in first[-1]
            started = time.monotonic()
            pings = 0
            while pings < 5:
                pings += receive_until(sock, "WATCHDOG=1", 2)[-1].count("WATCHDOG=1")
            assert time.monotonic() - started < 2.5, "a ping every 0.2 s"
            gateway.signal(signal.SIGTERM)
            receive_until(sock, "STOPPING=1", 10)
            assert gateway.wait(15) == 0
        finally:
            gateway.close()


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify("READY=1") is False
    assert watchdog_interval_s() is None


def test_the_watchdog_interval_and_whose_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert watchdog_interval_s() is None


def test_a_socket_that_is_gone_is_a_warning_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify("WATCHDOG=1") is False
