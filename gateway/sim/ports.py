"""Free-port allocation and readiness probing for the simulated servers.

Every real server the tests start (MQTT broker, Modbus TCP server) listens on
its own ephemeral port on 127.0.0.1, so tests never collide with each other or
with a system service such as a distro mosquitto already bound to 1883.
"""

from __future__ import annotations

import socket

LOCALHOST = "127.0.0.1"


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks the port (bind to port 0); the socket is closed before
    returning so the caller's server can bind it. Another process could grab
    the port in between, which is acceptable for tests: Linux hands out
    ephemeral ports pseudo-randomly, so a quick reuse is unlikely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if ``host:port`` accepts a TCP connection right now.

    Servers are polled with this instead of sleeping a fixed time, so tests
    go on as soon as a server is ready yet slow machines still get a chance.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
