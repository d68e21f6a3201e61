"""systemd's notify protocol: ready, stopping, status, and the watchdog.

Under ``Type=notify`` systemd considers the gateway started only once it says
READY=1 (journal open, API bound), and with ``WatchdogSec`` it restarts a
gateway that stops saying WATCHDOG=1. The protocol is one datagram to the
socket named in ``NOTIFY_SOCKET``; outside systemd every call does nothing.
(Fifteen lines of stdlib, not a dependency: the ``systemd`` bindings need
libsystemd's headers to build, and the pure-Python ``sdnotify`` package is
unmaintained.)
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``KEY=value`` lines to systemd; False when not run by systemd (or it fails)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode("utf-8"))
    except OSError as exc:
        log.warning("systemd notify failed socket=%s error=%s", address, exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to say WATCHDOG=1 (half of systemd's ``WatchdogSec``), or None when
    no watchdog is asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2_000_000)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
