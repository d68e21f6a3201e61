"""Pseudo-terminals standing in for RS-485/RS-232 lines.

The gateway talks to meters over serial ports. A pty slave is a real tty
device path that pyserial (and pymodbus' serial transport) open exactly like
``/dev/ttyUSB0``, so serial code runs unmodified against it:

* ``open_pty_pair()`` / fixture ``pty_pair``: the test drives the line itself
  through the master fd and the code under test opens the slave path.
* ``null_modem()`` / fixture ``null_modem_pair``: two slave paths wired to
  each other, for when both ends need a path -- e.g. a pymodbus serial server
  simulating a meter on one end and the gateway's client on the other.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import tty
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import pytest
import serial

log = logging.getLogger(__name__)

_CHUNK = 4096


class PtyPair(NamedTuple):
    """Master end (fd, driven by the test), slave end (path, opened by the code under test)."""

    master_fd: int
    slave_path: str


@contextmanager
def open_pty_pair() -> Iterator[PtyPair]:
    """Open a raw pty pair; both ends are closed when the block exits.

    Raw mode matters: a fresh pty echoes input back and translates CR/LF,
    which corrupts binary Modbus frames. The harness keeps its own slave fd
    open for the pair's lifetime so the tty keeps its settings and reading the
    master blocks (instead of failing with EIO) while nobody has the slave open.
    """
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        yield PtyPair(master_fd, os.ttyname(slave_fd))
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def open_serial(path: str, baudrate: int = 9600, timeout: float = 1.0) -> serial.Serial:
    """Open ``path`` with pyserial the way the gateway opens a real port.

    The caller closes it (it is a context manager). A pty ignores the baud
    rate, but passing one keeps the call identical to production.
    """
    return serial.Serial(path, baudrate=baudrate, timeout=timeout)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: a pty master may accept only part of a write."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _bridge(fd_a: int, fd_b: int, wake_fd: int) -> None:
    """Copy bytes both ways between two pty masters until ``wake_fd`` is readable."""
    peer = {fd_a: fd_b, fd_b: fd_a}
    while True:
        readable, _, _ = select.select([fd_a, fd_b, wake_fd], [], [])
        if wake_fd in readable:
            return
        for fd in readable:
            _write_all(peer[fd], os.read(fd, _CHUNK))


@contextmanager
def null_modem() -> Iterator[tuple[str, str]]:
    """Yield two tty paths cross-connected like a null-modem cable (a software ``socat``).

    Bytes written to one path are read from the other. A background thread
    copies between the two pty masters; it is stopped and joined on exit.
    """
    with ExitStack() as stack:
        side_a = stack.enter_context(open_pty_pair())
        side_b = stack.enter_context(open_pty_pair())
        wake_r, wake_w = os.pipe()
        stack.callback(os.close, wake_r)
        stack.callback(os.close, wake_w)
        thread = threading.Thread(
            target=_bridge,
            args=(side_a.master_fd, side_b.master_fd, wake_r),
            name="null-modem-bridge",
            daemon=True,
        )
        thread.start()
        log.debug("null modem %s <-> %s", side_a.slave_path, side_b.slave_path)
        try:
            yield side_a.slave_path, side_b.slave_path
        finally:
            os.write(wake_w, b"\0")
            thread.join(timeout=5)
            if thread.is_alive():
                raise RuntimeError("null-modem bridge thread did not stop")


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    """A raw pty pair ``(master_fd, slave_path)``, closed after the test."""
    with open_pty_pair() as pair:
        yield pair


@pytest.fixture
def null_modem_pair() -> Iterator[tuple[str, str]]:
    """Two cross-connected tty paths ``(path_a, path_b)``, torn down after the test."""
    with null_modem() as paths:
        yield paths
