"""A small TCP proxy in front of the receiver's app, for the faults ASGI cannot make.

public port → ``FaultProxy`` → the uvicorn app on an internal port.

It follows HTTP/1.1 framing (``Content-Length`` or chunked, both ways) one
request at a time per client connection, so keep-alive works through it and
every fault applies to exactly one request:

* **reset after store** — the app stores the batch and marks its answer with
  ``X-Sim-Reset``; the proxy reads that whole answer and then resets the
  client's connection (``SO_LINGER`` 0, so the client sees a real RST) instead
  of forwarding it. The client cannot know its batch was stored: it must
  resend it, and the receiver answers ``duplicate``.
* **silent** — a request is read and never answered; the connection stays
  open until the client gives up (a WAN dropping packets). The page and
  ``/_sim/…`` stay reachable, so a person can switch it off again.
* **down for N s** — the listening socket is closed (new connections are
  refused) and open connections are reset; after N s the proxy listens on
  the same port again (``SO_REUSEADDR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

from gateway.sync.receiver.faults import DOWN_HEADER, RESET_HEADER, FaultPlan

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_CHUNKED = -1
_UNTIL_EOF = -2
_REOPEN_RETRY_S = 0.2
_CLOSE_TIMEOUT_S = 2.0


class _BadFraming(Exception):
    """A message whose length cannot be told; the connection is dropped."""


def _parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The start line and the headers (lower-case names) of a request or response."""
    lines = head[:-4].split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise _BadFraming(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _without(head: bytes, *prefixes: bytes) -> bytes:
    """A message head without the header lines whose lower-case form starts so."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0], *(line for line in lines[1:] if not line.lower().startswith(prefixes))]
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _framing(headers: dict[bytes, bytes], *, default: int) -> int:
    """Body length, ``_CHUNKED``, or ``default`` when neither header is present."""
    encoding = headers.get(b"transfer-encoding")
    if encoding is not None:
        if encoding.lower().endswith(b"chunked"):
            return _CHUNKED
        raise _BadFraming(f"unsupported transfer-encoding {encoding!r}")
    length = headers.get(b"content-length")
    if length is None:
        return default
    if not length.isdigit():
        raise _BadFraming(f"bad content-length {length!r}")
    return int(length)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter | bytearray | None, framing: int
) -> None:
    """Copy one message body to a writer, into a buffer, or nowhere (None)."""

    async def copy(data: bytes) -> None:
        if isinstance(writer, bytearray):
            writer.extend(data)
        elif writer is not None:
            writer.write(data)
            await writer.drain()

    if framing >= 0:
        left = framing
        while left:
            data = await reader.read(min(left, _CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            await copy(data)
    elif framing == _CHUNKED:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0], 16)
            except ValueError:
                raise _BadFraming(f"bad chunk size {size_line[:40]!r}") from None
            await copy(size_line)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    await copy(trailer)
                await copy(trailer)
                return
            await copy(await reader.readexactly(size + 2))
    else:
        while data := await reader.read(_CHUNK):
            await copy(data)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop a connection with an RST, as a crashed server or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _exempt(start_line: bytes) -> bool:
    """The page and the control plane, which ``silent`` must not swallow."""
    parts = start_line.split(b" ")
    path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
    return path == b"/" or path.startswith(b"/_sim/")


class FaultProxy:
    """The public listener of the receiver; see the module docstring.

    All methods run on the receiver's event loop.
    """

    def __init__(self, plan: FaultPlan, upstream_port: int, host: str, port: int) -> None:
        self._plan = plan
        self._upstream_port = upstream_port
        self._host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self._reopen: asyncio.TimerHandle | None = None
        self._reopen_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def is_down(self) -> bool:
        return self._server is None

    async def start(self) -> int:
        """Listen; the port actually bound (the one given, or a free one for 0)."""
        await self._listen()
        return self.port

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def down_for(self, seconds: float, keep: asyncio.StreamWriter | None = None) -> None:
        """Refuse connections for ``seconds`` and reset the open ones (but ``keep``).

        Called again while down, the outage ends ``seconds`` from now.
        """
        loop = asyncio.get_running_loop()
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._clients):
            if writer is not keep:
                _reset(writer)
        if self._reopen is not None:
            self._reopen.cancel()
        self._reopen = loop.call_later(seconds, self._come_back)
        log.warning("central-sim down for %.1f s (port %d refuses connections)", seconds, self.port)

    def _come_back(self) -> None:
        self._reopen = None
        self._reopen_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        while not self._closed:
            try:
                await self._listen()
            except OSError as exc:
                log.warning("central-sim cannot listen on port %d again yet: %s", self.port, exc)
                await asyncio.sleep(_REOPEN_RETRY_S)
            else:
                log.warning("central-sim up again on port %d", self.port)
                return

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for their tasks."""
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Aborting the transports ends every handler at its next read or write.
        # (Cancelling them instead makes asyncio's stream callback log an error.)
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=_CLOSE_TIMEOUT_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        # Let the transports' connection_lost callbacks close their sockets.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self._clients.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if self._closed:
                return
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed between requests
                start_line, headers = _parse_head(head)
                if self._plan.faults.silent and not _exempt(start_line):
                    log.info("central-sim silent: swallowing %s", start_line[:120])
                    while await reader.read(_CHUNK):
                        pass
                    return
                if upstream is None or upstream[0].at_eof():
                    if upstream is not None:
                        self._drop(upstream[1])
                    upstream = await asyncio.open_connection("127.0.0.1", self._upstream_port)
                    self._writers.add(upstream[1])
                up_reader, up_writer = upstream
                if headers.get(b"expect", b"").lower() == b"100-continue":
                    # Answer it here: the app would only send it once the body is
                    # being read, and the proxy reads the body before the answer.
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = _without(head, b"expect:")
                up_writer.write(head)
                await _pump(reader, up_writer, _framing(headers, default=0))
                if not await self._answer(start_line, up_reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.debug("central-sim proxy connection ended: %r", exc)
        except _BadFraming as exc:
            log.warning("central-sim proxy dropped a connection: %s", exc)
        finally:
            if upstream is not None:
                self._drop(upstream[1])
            self._drop(writer)
            self._clients.discard(writer)
            self._tasks.discard(task)

    async def _answer(
        self, request_line: bytes, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Forward the app's answer (or reset instead); whether the connection goes on."""
        head = await up_reader.readuntil(b"\r\n\r\n")
        status_line, headers = _parse_head(head)
        parts = status_line.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if request_line.startswith(b"HEAD ") or status in (204, 304):
            framing = 0
        else:
            framing = _framing(headers, default=_UNTIL_EOF)
        if RESET_HEADER.encode() in headers:
            await _pump(up_reader, None, framing)
            log.info("central-sim reset after store: %s", request_line[:120])
            _reset(writer)
            return False
        down = headers.get(DOWN_HEADER.encode())
        if down is not None:
            # Stop listening before the client has the answer, or it could connect
            # again in between; and tell it this connection ends here.
            body = bytearray()
            await _pump(up_reader, body, framing)
            self.down_for(float(down), keep=writer)
            head = _without(head, b"x-sim-", b"connection:")
            writer.write(head[:-2] + b"connection: close\r\n\r\n" + body)
            await writer.drain()
            return False
        writer.write(head)
        await _pump(up_reader, writer, framing)
        close = headers.get(b"connection", b"").lower() == b"close"
        return not close and framing != _UNTIL_EOF

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.close()
