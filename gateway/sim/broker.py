"""A real MQTT broker on a free port of 127.0.0.1: the demo's embedded broker and
the tests' broker.

Two kinds are supported:

* ``mosquitto`` -- what sites run; used whenever the binary is installed.
* ``amqtt`` -- pure Python, installable from PyPI; the fallback.

``GATEWAY_TEST_BROKER=mosquitto|amqtt`` forces the default kind. Both run as a
subprocess: that keeps the broker's own threads, event loop and warnings out
of the calling process and makes ``restart()`` a real process restart, as
after a broker crash or update.

Both require a username and password (``Broker.username`` /
``Broker.password``): anonymous clients behave differently (amqtt drops the
persistent session of an anonymous client on disconnect), and sites never
allow them anyway.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from paho.mqtt.reasoncodes import ReasonCode

from gateway.sim.ports import LOCALHOST, free_tcp_port, port_is_open

log = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "amqtt"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("mosquitto", "amqtt")
ENV_BROKER_KIND = "GATEWAY_TEST_BROKER"

DEFAULT_USERNAME = "gateway-test"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class BrokerUnavailable(RuntimeError):
    """The requested broker kind cannot run on this machine (binary missing)."""


class BrokerStartError(RuntimeError):
    """The broker process died or never opened its port; the message has its log."""


class MqttConnectError(RuntimeError):
    """The broker refused the CONNECT; ``reason`` is its CONNACK reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"broker refused connection: {reason}")
        self.reason = reason


def _find_binary(name: str, *fallbacks: str) -> str | None:
    """Locate ``name`` on PATH or at a fixed path.

    ``/usr/sbin`` is often missing from a non-root PATH, yet that is where
    Debian installs mosquitto, hence the explicit fallbacks.
    """
    found = shutil.which(name)
    if found:
        return found
    return next((path for path in fallbacks if os.access(path, os.X_OK)), None)


def mosquitto_binary() -> str | None:
    """Return the mosquitto executable, or None if it is not installed."""
    return _find_binary("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def default_broker_kind() -> BrokerKind:
    """Pick the broker kind: ``$GATEWAY_TEST_BROKER``, else mosquitto if installed, else amqtt."""
    forced = os.environ.get(ENV_BROKER_KIND, "").strip().lower()
    if forced:
        if forced not in BROKER_KINDS:
            raise ValueError(f"{ENV_BROKER_KIND}={forced!r}: expected one of {BROKER_KINDS}")
        return forced
    return "mosquitto" if mosquitto_binary() else "amqtt"


@dataclass
class Broker:
    """A running broker subprocess and the credentials to reach it.

    ``restart()`` keeps host, port and credentials, so clients configured
    with them can reconnect. Sessions do not survive a restart (no
    persistence), exactly like a broker that crashed without a store.
    """

    host: str
    port: int
    username: str
    password: str
    kind: BrokerKind
    #: False only for a mosquitto without ``mosquitto_passwd``: then anyone may connect.
    auth_enforced: bool = True
    _command: list[str] = field(default_factory=list, repr=False)
    _workdir: Path = field(default_factory=Path, repr=False)
    _env: dict[str, str] | None = field(default=None, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def _output_path(self) -> Path:
        return self._workdir / "broker.out"

    def start(self) -> None:
        """Start the broker process and block until its port accepts connections."""
        if self.running:
            raise RuntimeError(f"{self.kind} broker on port {self.port} is already running")
        with self._output_path.open("ab") as output:
            self._process = subprocess.Popen(
                self._command,
                cwd=self._workdir,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_is_open(self.host, self.port, timeout=0.2):
            returncode = self._process.poll()
            if returncode is not None:
                self._process = None
                raise BrokerStartError(
                    f"{self.kind} broker exited with code {returncode} before listening "
                    f"on {self.host}:{self.port}; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise BrokerStartError(
                    f"{self.kind} broker did not listen on {self.host}:{self.port} "
                    f"within {START_TIMEOUT_S:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        log.info(
            "%s broker listening on %s:%d (pid %d)",
            self.kind,
            self.host,
            self.port,
            self._process.pid,
        )

    def stop(self) -> None:
        """Stop the broker with SIGTERM, killing it if it does not exit in time.

        Always reaps the process so no zombie or ResourceWarning is left.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # mosquitto shuts down cleanly on SIGTERM; amqtt has no handler and
            # dies at once, like a crash. (amqtt's graceful path, SIGINT, can
            # raise KeyboardInterrupt outside its loop's handler and hang.)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s broker pid %d ignored the stop signal; killing it", self.kind, process.pid
                )
                process.kill()
                process.wait()
        log.info(
            "%s broker on port %d stopped (exit code %s)", self.kind, self.port, process.returncode
        )

    def restart(self) -> None:
        """Stop and start the broker again on the same port, as after a crash or update."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` of the broker's log, for failure messages."""
        text = ""
        for path in (self._workdir / "mosquitto.log", self._output_path):
            if path.exists():
                text += path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _mosquitto_setup(
    broker: Broker, binary: str, persistent: bool = False, max_inflight: int | None = None
) -> None:
    """Write mosquitto's config (and password file) and set the command line.

    ``persistent`` keeps sessions and queued messages across ``restart()``
    (saved on SIGTERM), as a production broker cluster does. ``max_inflight``
    sets how many unacknowledged QoS 1 messages a client may have (default 20).
    """
    workdir = broker._workdir
    lines = [
        f"listener {broker.port} {broker.host}",
        # mosquitto silently drops QoS 1/2 messages queued for an offline
        # persistent session beyond this limit (default 1000); 0 = no limit,
        # so a burst a store-and-forward test expects is never lost here.
        "max_queued_messages 0",
        *([f"max_inflight_messages {max_inflight}"] if max_inflight else []),
        *(
            ["persistence true", f"persistence_location {workdir}/"]
            if persistent
            else ["persistence false"]
        ),
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if os.geteuid() == 0:
        # Started as root, mosquitto drops to user "mosquitto", which cannot
        # read the config/password files in our root-owned temporary directory.
        lines.append("user root")
    passwd_tool = _find_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    if passwd_tool:
        password_file = workdir / "passwd"
        subprocess.run(
            [passwd_tool, "-b", "-c", str(password_file), broker.username, broker.password],
            check=True,
            capture_output=True,
        )
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    else:
        log.warning("mosquitto_passwd not found: mosquitto test broker allows anonymous clients")
        lines.append("allow_anonymous true")
        broker.auth_enforced = False
    config = workdir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    broker._command = [binary, "-c", str(config)]


def _amqtt_setup(broker: Broker) -> None:
    """Write amqtt's config (and password file) and set the command line.

    amqtt 0.12's FileAuthPlugin reads ``user:hash`` lines and verifies with
    pwdlib; only argon2 (and bcrypt, if installed) hashes are accepted for new
    files -- ``$6$`` sha512-crypt still works but raises DeprecationWarning.
    The config is JSON, which amqtt's YAML loader reads as-is.
    """
    from pwdlib.hashers.argon2 import Argon2Hasher

    workdir = broker._workdir
    password_file = workdir / "passwd"
    password_file.write_text(
        f"{broker.username}:{Argon2Hasher().hash(broker.password)}\n", encoding="utf-8"
    )
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{broker.host}:{broker.port}"}},
        # Listing plugins replaces amqtt's defaults, which include
        # AnonymousAuthPlugin(allow_anonymous=True) and the $SYS publisher.
        "plugins": {
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)}
        },
    }
    config_path = workdir / "amqtt.yaml"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    broker._command = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config_path)]
    # The broker is a tool here, not code under test: keep a PYTHONWARNINGS=error
    # meant for the test process from killing it on amqtt's own deprecations.
    broker._env = {**os.environ, "PYTHONWARNINGS": "ignore"}


@contextmanager
def run_broker(
    kind: BrokerKind | None = None,
    *,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    persistent: bool = False,
    max_inflight: int | None = None,
) -> Iterator[Broker]:
    """Run a broker of ``kind`` (default: ``default_broker_kind()``) for the ``with`` block.

    ``persistent`` and ``max_inflight`` (mosquitto only): see ``_mosquitto_setup``.
    Raises BrokerUnavailable if mosquitto is requested but not installed, and
    BrokerStartError (with the broker's log) if it does not come up.
    """
    kind = kind or default_broker_kind()
    if kind not in BROKER_KINDS:
        raise ValueError(f"unknown broker kind {kind!r}: expected one of {BROKER_KINDS}")
    binary = mosquitto_binary() if kind == "mosquitto" else None
    if kind == "mosquitto" and binary is None:
        raise BrokerUnavailable("mosquitto is not installed")
    with tempfile.TemporaryDirectory(prefix=f"gw-test-{kind}-") as tmp:
        broker = Broker(
            host=LOCALHOST,
            port=free_tcp_port(),
            username=username,
            password=password or secrets.token_urlsafe(16),
            kind=kind,
            _workdir=Path(tmp),
        )
        if binary is not None:
            _mosquitto_setup(broker, binary, persistent, max_inflight)
        else:
            _amqtt_setup(broker)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
