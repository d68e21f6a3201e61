"""``CentralReceiver``: the reference central system, running in a background thread.

Tests, the demo and the benchmark need a real HTTP peer they can start in a
line, reach over TCP and inspect afterwards. One thread runs its own event
loop with the uvicorn app on an internal port and the fault proxy on the
public one; other threads reach it only through the thread-safe store, the
fault settings (plain attributes) and coroutines handed to its loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from gateway.sync.receiver.app import ReceiverContext, create_receiver_app
from gateway.sync.receiver.faults import FaultPlan, Faults
from gateway.sync.receiver.models import check_ticket_update, complete_outage_notice
from gateway.sync.receiver.proxy import FaultProxy
from gateway.sync.receiver.store import ReceiverStore

log = logging.getLogger(__name__)

T = TypeVar("T")
START_TIMEOUT_S = 10.0


class CentralReceiver:
    """The central billing & ticket system of ../shared/contracts/central-api.md.

    ``sites`` maps each site id to its bearer token; a site listed in
    ``signing_secrets`` must sign its requests. ``start()`` returns the base
    URL; ``stop()`` (or leaving the ``with`` block) shuts it down and joins
    the thread. The database outlives the receiver: start it again on the same
    file and everything accepted before is still there (and ``duplicate``).
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        sites: Mapping[str, str],
        signing_secrets: Mapping[str, str] | None = None,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not sites:
            raise ValueError("give at least one site_id → token")
        unknown = set(signing_secrets or {}) - set(sites)
        if unknown:
            raise ValueError(f"signing secret for unknown site(s): {', '.join(sorted(unknown))}")
        self.db_path = Path(db_path)
        self._sites = dict(sites)
        self._secrets = dict(signing_secrets or {})
        self._plan = FaultPlan(faults)
        self._host = host
        self._port = port
        self._store: ReceiverStore | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._proxy: FaultProxy | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> str:
        """Start serving; the base URL (``http://127.0.0.1:PORT``).

        Raises OSError if the port cannot be bound, ValueError for a database
        from a newer receiver.
        """
        if self._thread is not None:
            raise RuntimeError("the receiver is already running")
        self._store = ReceiverStore.open(self.db_path)
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="central-receiver", daemon=True
        )
        self._thread.start()
        try:
            self._port = ready.result(timeout=START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        log.info("central receiver listening on %s db=%s", self.base_url, self.db_path)
        return self.base_url

    def stop(self) -> None:
        """Stop serving, close every connection and the database; idempotent."""
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        self._join()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self._proxy = None
        self._stop = None

    def __enter__(self) -> CentralReceiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # reported to start(); nothing else can see it
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("central receiver stopped with an error")
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)

    async def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        assert self._store is not None
        self._stop = asyncio.Event()
        ctx = ReceiverContext(self._store, self._plan, self._sites, self._secrets)
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so
        # (accepted ones inherit it); without it every answer waits ~40 ms for an ACK.
        app_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            app_socket.bind(("127.0.0.1", 0))
            config = uvicorn.Config(
                create_receiver_app(ctx),
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="off",
                proxy_headers=False,
                server_header=False,
                # The proxy owns client connections; it closes its upstream ones.
                timeout_keep_alive=3600,
                timeout_graceful_shutdown=2,
            )
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve(sockets=[app_socket]))
            while not server.started:
                if serving.done():
                    serving.result()
                    raise RuntimeError("the receiver's app server stopped while starting")
                await asyncio.sleep(0.005)
            proxy = FaultProxy(self._plan, app_socket.getsockname()[1], self._host, self._port)
            try:
                port = await proxy.start()
            except BaseException:
                server.should_exit = True
                await serving
                raise
            self._proxy = proxy
            ready.set_result(port)
            await self._stop.wait()
            ctx.stopping.set()
            await proxy.close()
            server.should_exit = True
            await serving
        finally:
            app_socket.close()

    # -- faults --------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The live faults: assign a field and the next request sees it."""
        return self._plan.faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change some faults (checked: ValueError for a bad value or name)."""
        return self._plan.update(changes)

    def clear_faults(self) -> Faults:
        """Switch every fault off."""
        return self._plan.clear()

    def down_for(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (open ones are reset), then come back
        on the same port; returns once the port refuses."""
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        self._on_loop(lambda proxy: proxy.down_for(seconds))

    @property
    def is_down(self) -> bool:
        return self._on_loop(lambda proxy: proxy.is_down)

    def _on_loop(self, fn: Callable[[FaultProxy], T]) -> T:
        loop, proxy = self._loop, self._proxy
        if loop is None or proxy is None:
            raise RuntimeError("the receiver is not running")

        async def call() -> T:
            return fn(proxy)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=START_TIMEOUT_S)

    # -- what arrived -------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        if self._thread is None:
            raise RuntimeError("the receiver is not running")
        return f"http://{self._host}:{self._port}"

    @property
    def sites(self) -> dict[str, str]:
        return dict(self._sites)

    def _query(self, fn: Callable[[ReceiverStore], T]) -> T:
        """Run a query on the live store, or on the file while stopped."""
        if self._store is not None:
            return fn(self._store)
        store = ReceiverStore.open(self.db_path)
        try:
            return fn(store)
        finally:
            store.close()

    def _site(self, site_id: str | None) -> str:
        """The site a helper means: the one given, else the first in ``sites``."""
        if site_id is None:
            return next(iter(self._sites))
        if site_id not in self._sites:
            raise ValueError(f"unknown site {site_id!r}")
        return site_id

    def stats(self) -> dict[str, Any]:
        """The same totals as ``GET /_sim/stats``."""
        stats = self._query(lambda store: store.stats())
        return {**stats, "faults": self._plan.faults.as_dict()}

    def readings(self, site_id: str | None = None) -> list[dict[str, Any]]:
        """Every stored reading (of one site) with its ``deliveries`` count."""
        return self._query(lambda store: store.readings(site_id))

    def reading_deliveries(self, reading_id: str, site_id: str | None = None) -> int:
        """How many valid copies of a reading arrived (0: never)."""
        site = self._site(site_id)
        return self._query(lambda store: store.reading_deliveries(site, reading_id))

    def incidents(self, site_id: str | None = None) -> list[dict[str, Any]]:
        """Stored incidents (highest revision each) with ``ticket_no``, latest first."""
        return self._query(lambda store: store.incidents(site_id))

    def last_heartbeat(self, site_id: str | None = None) -> dict[str, Any] | None:
        site = self._site(site_id)
        return self._query(lambda store: store.last_heartbeat(site))

    def add_ticket_update(
        self,
        *,
        state: str,
        incident_id: str | None = None,
        ticket_no: str | None = None,
        note: str = "",
        at: str | None = None,
        site_id: str | None = None,
    ) -> dict[str, Any]:
        """What the central office did to a ticket, for the site's update feed.

        Raises ValueError for bad values, LookupError for an unknown incident.
        """
        fields: dict[str, Any] = {"state": state, "note": note}
        for name, value in (("incident_id", incident_id), ("ticket_no", ticket_no), ("at", at)):
            if value is not None:
                fields[name] = value
        check_ticket_update(fields)
        site = self._site(site_id)
        return self._query(lambda store: store.add_ticket_update(site, **fields))

    def add_outage_notice(
        self,
        *,
        utility: str,
        scope: Sequence[str],
        starts_at: str,
        ends_at: str,
        reason: str,
        notice_id: str | None = None,
        site_id: str | None = None,
    ) -> dict[str, Any]:
        """A planned utility cut for the site's notice feed (ValueError for bad values)."""
        notice: dict[str, Any] = {
            "utility": utility,
            "scope": list(scope),
            "starts_at": starts_at,
            "ends_at": ends_at,
            "reason": reason,
        }
        if notice_id is not None:
            notice["notice_id"] = notice_id
        complete = complete_outage_notice(notice)
        site = self._site(site_id)
        return self._query(lambda store: store.add_outage_notice(site, complete))
