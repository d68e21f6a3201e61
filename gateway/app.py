"""Wiring: builds the running service from a validated site configuration.

``GatewayService.run()`` opens the journal, binds the API socket (so a port
clash is a clear start-up error, not a crash later), starts every part under
the supervisor, and on SIGTERM/SIGINT shuts down within ``service.shutdown_s``:
intake stops first, parts are cancelled in parallel, the writer drains last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvicorn

from gateway import __version__
from gateway.adapters.modbus.adapter import ModbusSide
from gateway.adapters.mqtt.side import AccessSide
from gateway.adapters.serial.wand import WandSide
from gateway.alarms.plan import load_plan
from gateway.alarms.rules import Directory
from gateway.alarms.service import AlarmService
from gateway.auth import TokenRegistry
from gateway.clock import Clock, StepWatch
from gateway.config import SiteConfig
from gateway.errors import GatewayError, JournalClosed, JournalError, JournalWriteError
from gateway.events import Event
from gateway.health import DeviceHealth
from gateway.journal.store import Journal
from gateway.metrics import GatewayMetrics
from gateway.patrol.tracker import PatrolTracker
from gateway.reports.book import ReportBook
from gateway.sdnotify import notify, watchdog_interval_s
from gateway.storage import DiskWatch
from gateway.supervisor import PartFactory, PartHealth, Supervisor
from gateway.sync.side import SyncSide
from gateway.web.access import create_access_router
from gateway.web.alarms import create_alarm_router
from gateway.web.api import ApiContext, create_api
from gateway.web.handover import Handovers, create_handover_router
from gateway.web.meters import create_meter_router
from gateway.web.pages import create_page_router
from gateway.web.patrol import create_patrol_router
from gateway.web.reports import create_report_router
from gateway.web.screen import SiteStatus, create_screen_router
from gateway.web.sessions import SessionStore
from gateway.web.sync import create_sync_router

log = logging.getLogger(__name__)


class StartupError(GatewayError):
    """The service cannot start (e.g. its API port is taken); exit code 2."""


@dataclass(frozen=True)
class RunSummary:
    """What a run did, for ``gateway demo --duration``'s closing screen."""

    seconds: float
    events_this_run: int
    parts: dict[str, PartHealth]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


def bind_api_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before anything starts, so a clash fails start-up clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"api: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


class GatewayService:
    """One site's gateway: journal, parts, API."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        extra_parts: Sequence[tuple[str, PartFactory]] = (),
        on_ready: Callable[[str], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.modbus: ModbusSide | None = None
        self.sync: SyncSide | None = None
        self.access: AccessSide | None = None
        self.alarms: AlarmService | None = None
        self.patrol: PatrolTracker | None = None
        self.reports: ReportBook | None = None
        self.wands: WandSide | None = None
        self.supervisor = Supervisor()
        self.journal: Journal | None = None
        self._extra_parts = extra_parts
        self._on_ready = on_ready
        self.metrics = GatewayMetrics(
            lambda: self.journal,
            self.supervisor.health,
            self.devices,
            lambda: self.sync,
        )
        self.stop = asyncio.Event()

    def devices(self) -> list[DeviceHealth]:
        """Every device the gateway watches: polled meters and modules, access points."""
        polled = self.modbus.devices() if self.modbus else []
        wands = self.wands.devices() if self.wands else []
        return polled + (self.access.devices() if self.access else []) + wands

    async def run(self) -> RunSummary:
        """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
        started = time.monotonic()
        cfg = self.config
        sock = bind_api_socket(cfg.api.host, cfg.api.port)
        try:
            self.journal = await Journal.open(
                cfg.journal.path,
                max_pending=cfg.journal.max_pending,
                commit_interval_s=cfg.journal.commit_interval_ms / 1000,
                on_commit=self.metrics.on_commit,
            )
        except JournalError:
            sock.close()
            raise
        journal = self.journal
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        if cfg.devices.meters or cfg.devices.io_modules:
            self.modbus = await ModbusSide.build(cfg, journal, self.clock)
            for name, factory in self.modbus.parts():
                self.supervisor.add(name, factory)
        if cfg.mqtt is not None and cfg.devices.access_points:
            self.access = AccessSide.build(cfg, journal, self.clock)
            for name, factory in self.access.parts():
                self.supervisor.add(name, factory)
        if cfg.sync is not None:
            self.sync = SyncSide(cfg.sync, cfg.site.id, journal, self.clock, self.devices)
            for name, factory in self.sync.parts():
                self.supervisor.add(name, factory)
        if cfg.devices.patrol_wands:
            self.wands = WandSide.build(cfg, journal, self.clock)
            for name, factory in self.wands.parts():
                self.supervisor.add(name, factory)
        if cfg.patrol.checkpoints:
            self.patrol = PatrolTracker(cfg.patrol, cfg.site.zone, journal, self.clock)
            for name, factory in self.patrol.parts():
                self.supervisor.add(name, factory)
        self.reports = ReportBook(
            cfg.reports,
            cfg.site.zone,
            journal,
            self.clock,
            {u.name: u.role for u in cfg.users},
            on_incident=self.sync.wake if self.sync else None,
        )
        for name, factory in self.reports.parts():
            self.supervisor.add(name, factory)
        self.alarms = AlarmService(
            load_plan(cfg.site.contingency_plan),
            Directory.from_config(cfg),
            journal,
            self.clock,
            site_name=cfg.site.name,
            commands=self.access.commands if self.access else None,
            on_incident=self.sync.wake if self.sync else None,
        )
        for name, factory in self.alarms.parts():
            self.supervisor.add(name, factory)
        tokens = TokenRegistry(cfg.users)
        sessions = SessionStore(tokens)
        site = SiteStatus(
            journal,
            self.devices,
            cfg.parking.lots,
            self.sync,
            self.alarms,
            _device_kinds(cfg),
            zone=cfg.site.zone,
            mains=_building_mains(cfg),
            patrol=self.patrol,
        )
        api = create_api(
            ApiContext(
                site_id=cfg.site.id,
                journal=journal,
                tokens=tokens,
                metrics=self.metrics,
                parts=self.supervisor.health,
                sessions=sessions,
            ),
            routers=[
                create_meter_router(
                    cfg,
                    journal,
                    self.modbus.book if self.modbus else None,
                    self.devices,
                    self.modbus.outputs if self.modbus else None,
                ),
                create_sync_router(journal, self.sync),
                create_access_router(
                    journal, self.access.commands if self.access else None, cfg.parking.lots
                ),
                create_alarm_router(self.alarms, cfg.site.zone),
                create_screen_router(site),
                create_patrol_router(
                    cfg.patrol, self.patrol, journal, self.clock, self.alarms.plan.plan.shifts
                ),
                create_handover_router(Handovers(journal, site, self.alarms, self.reports)),
                create_report_router(self.reports, cfg.site.zone),
                create_page_router(
                    sessions,
                    journal,
                    site_name=cfg.site.name,
                    zone=cfg.site.timezone,
                    access_points=list(cfg.devices.access_points),
                    shelve_max_s=float(self.alarms.plan.plan.shelve_max_h) * 3600,
                    patrol=cfg.patrol,
                ),
            ],
        )
        self.supervisor.add("api", lambda: _serve_api(api, sock))
        self.supervisor.add("heartbeat", lambda: _heartbeat(self, cfg.service.heartbeat_s))
        watchdog = watchdog_interval_s()
        if watchdog is not None:
            self.supervisor.add("watchdog", lambda: _watchdog(journal, watchdog))
        for name, factory in self._extra_parts:
            self.supervisor.add(name, factory)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            await journal.submit(Event("gateway.started", None, {"version": __version__}))
            log.info("gateway started site=%s api=%s journal=%s", cfg.site.id, url, journal.path)
            if self._on_ready is not None:
                self._on_ready(url)
            notify("READY=1", f"STATUS=serving {url}, journal {journal.path}")
            await self._run_until_stopped()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            sock.close()
            if self.sync is not None:
                await self.sync.close()
            if self.alarms is not None:
                await self.alarms.close()
            await journal.close()  # no-op after a normal stop; drains after a failure
        return RunSummary(
            time.monotonic() - started, journal.events_committed, self.supervisor.health()
        )

    async def _run_until_stopped(self) -> None:
        journal = self.journal
        assert journal is not None
        budget = self.config.service.shutdown_s
        parts = asyncio.create_task(self.supervisor.run(self.stop), name="supervisor")
        stop_wait = asyncio.create_task(self.stop.wait(), name="stop-wait")
        await asyncio.wait({parts, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        self.stop.set()
        deadline = time.monotonic() + budget
        log.info("gateway stopping budget_s=%.1f", budget)
        notify("STOPPING=1", "STATUS=stopping")
        with contextlib.suppress(JournalClosed, asyncio.TimeoutError):
            await asyncio.wait_for(journal.submit(Event("gateway.stopping", None, {})), 0.5)
        if self.alarms is not None:  # the engine's rule memory, so a restart resumes it
            with contextlib.suppress(JournalError, asyncio.TimeoutError):
                await asyncio.wait_for(self.alarms.flush(), 1.0)
        journal.stop_intake()
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic() - 0.5)):
                await parts
        except TimeoutError:
            log.error("parts did not stop in time: %s", _still_running(self.supervisor))
        await journal.close(within_s=max(0.5, deadline - time.monotonic()))
        stop_wait.cancel()
        log.info("gateway stopped events_committed=%d", journal.events_committed)


def _device_kinds(cfg: SiteConfig) -> dict[str, str]:
    """Device id → what the screen calls it (meter, io, door, turnstile, barrier, …)."""
    d = cfg.devices
    kinds = {m.id: "meter" for m in d.meters}
    kinds.update({m.id: "io" for m in d.io_modules})
    kinds.update({a.id: a.kind for a in d.access_points})
    kinds.update({w.id: "wand" for w in d.patrol_wands})
    return kinds


def _building_mains(cfg: SiteConfig) -> dict[str, list[str]]:
    """Building → its main electricity meters."""
    mains: dict[str, list[str]] = {}
    for meter in cfg.devices.meters:
        if meter.role == "main" and meter.utility == "electricity" and meter.building:
            mains.setdefault(meter.building, []).append(meter.id)
    return mains


def _still_running(supervisor: Supervisor) -> str:
    return ",".join(
        name for name, health in supervisor.health().items() if health.state.value == "running"
    )


async def _serve_api(app: object, sock: socket.socket) -> None:
    """The API part: uvicorn on the pre-bound socket; graceful stop on cancel."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    # A duplicate, because uvicorn closes the sockets it served: the original
    # stays bound so a restarted API part listens on the same port at once.
    serving = asyncio.create_task(server.serve(sockets=[sock.dup()]), name="uvicorn")
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


async def _watchdog(journal: Journal, interval: float) -> None:
    """Say WATCHDOG=1 to systemd, each time only after a round trip through the
    journal's writer: a wedged writer (or event loop) stops the pings, and systemd
    restarts the gateway (``WatchdogSec`` in deploy/site-gateway.service)."""
    while True:
        await journal.write(lambda conn: None)
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def _heartbeat(service: GatewayService, interval: float) -> None:
    """The heartbeat part: the gateway's own vital signs into the journal, the
    storage alarm's events when free space crosses its line (gateway/storage.py),
    and a ``gateway.clock_step`` when the wall clock was set back or forward."""
    journal = service.journal
    assert journal is not None
    disk = DiskWatch(journal.path.parent, service.config.journal.disk_low_mb)
    clock = StepWatch()
    started = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        free_mb = disk.free_mb()
        events = [
            Event(
                "gateway.heartbeat",
                None,
                {
                    "uptime_s": round(time.monotonic() - started),
                    "queue_depth": journal.queue_depth,
                    "disk_free_mb": round(free_mb, 1),
                    "parts": {n: h.state.value for n, h in service.supervisor.health().items()},
                },
            )
        ]
        stepped = clock.step()
        if stepped is not None:
            log.warning("clock stepped step_s=%.1f", stepped)
            events.append(Event("gateway.clock_step", None, {"step_s": round(stepped, 1)}))
        change = disk.change(free_mb)
        if change is not None:
            detail = {"free_mb": round(free_mb, 1), "low_mb": disk.low_mb, "where": "journal"}
            events.append(Event(f"gateway.{change}", None, detail))
        try:
            await journal.submit_many(events)
        except JournalWriteError as exc:  # a full disk: try again at the next beat
            log.error("heartbeat not recorded disk_free_mb=%.1f error=%s", free_mb, exc)
            continue
        if change is not None:
            disk.recorded(change)
            log.warning("storage %s free_mb=%.1f low_mb=%d", change, free_mb, disk.low_mb)
