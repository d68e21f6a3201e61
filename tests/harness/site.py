"""Site files and a running gateway for tests: in-process or as a subprocess.

``write_site`` makes a minimal valid site file with one user per role and
returns the tokens; ``GatewayProcess`` runs ``gateway run -c FILE`` as a real
process (for signal, kill -9 and exit-code tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.auth import hash_token
from gateway.sim.ports import free_tcp_port

ROLES = ("guard", "supervisor", "admin", "central")


@dataclass
class Site:
    path: Path
    port: int
    tokens: dict[str, str]
    journal: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def write_site(directory: Path, *, port: int | None = None, extra: str = "") -> Site:
    """A valid site file in ``directory`` (journal beside it), plus ``extra`` TOML."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "profiles").mkdir(exist_ok=True)
    port = free_tcp_port() if port is None else port
    tokens = {role: f"test-token-{role}-{os.urandom(4).hex()}" for role in ROLES}
    users = "".join(
        f'\n[[users]]\nname = "{role}1"\nrole = "{role}"\ntoken_sha256 = "{hash_token(token)}"\n'
        for role, token in tokens.items()
    )
    text = (
        '[site]\nid = "test-site"\nname = "测试小区"\n\n'
        '[journal]\npath = "journal.db"\n\n'
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n\n'
        "[service]\nheartbeat_s = 1\n" + users + extra
    )
    path = directory / "site.toml"
    path.write_text(text, encoding="utf-8")
    return Site(path, port, tokens, directory / "journal.db")


class GatewayProcess:
    """``gateway run -c FILE`` as a child process, with its stderr kept in a file."""

    def __init__(self, site: Site, env: dict[str, str] | None = None) -> None:
        self.site = site
        self.log_path = site.path.parent / f"gateway-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(site.path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until /healthz answers; fail with the process log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.site.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Make sure the child is gone (kill -9 if it is still there)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@contextmanager
def running(site: Site) -> Iterator[GatewayProcess]:
    """``gateway run`` for the site, ready on entry, gone (kill -9 if need be) on exit."""
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.close()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
