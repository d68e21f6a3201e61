"""``gateway demo``: the gateway on a simulated slice of the reference site.

Towers B01 and B02 of the reference compound (220 meters and the I/O module
on the fire panel, two lifts and a sump: ``gateway.sim.meters``) are
simulated on Modbus TCP ports of 127.0.0.1; the site file for them is
written into ``--data`` and the gateway runs on it. Household meters are read
every minute and mains every 10 s (the reference site: 15 min and 1 min), so
readings show up at once. Each run gets fresh random tokens (printed once,
never stored in clear) and keeps its journal under ``--data``, so a second run
continues the same journal. After 30 s one building main goes silent, as a
guard would see a dead meter; a minute later it answers again.

Gates and barriers: an embedded MQTT broker (Mosquitto if installed, else
amqtt) carries two turnstiles and four plate-camera barriers of the simulated
compound (``gateway.sim.gates``), counted into the surface lot and the garage;
at 90 s the garage's entry arm jams (a ``barrier.fault``).

The central billing and ticket system is the reference receiver
(``gateway.sync.receiver``) on another port of 127.0.0.1, with its own
database under ``--data``; its page lists what the gateway delivered. At
2 min the WAN "fails" for a minute: the backlog grows, then drains.

The guard tour (巡更): six checkpoints and a route in ``demo-site.toml``, rounds
every 5–6 minutes all day from ~10 s after the start (the schedule is written at
start). A guard walks each round with a simulated wand (``gateway.sim.wand`` on
a pty, the site's cradle), docking it on the way and at the end; in the first
round he skips one checkpoint, so a ``patrol.checkpoint_missed`` and its alarm
follow when the round is judged (~1:45 after the start).

At 20 s a resident phones in a leak: the guard takes the report (报修, P2) and
sends the plumber; nobody marks him on scene, so at 15 min the report is
overdue and the plan's alarm follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import sqlite3
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from gateway.app import GatewayService, RunSummary
from gateway.auth import hash_token, new_token
from gateway.config import SiteConfig, load_site_config
from gateway.health import DeviceHealth
from gateway.journal.queries import count_events
from gateway.patrol.model import PatrolSettings
from gateway.profiles import load_profiles
from gateway.sim.broker import Broker, BrokerStartError, BrokerUnavailable, run_broker
from gateway.sim.gates import GateTraffic, SimBarrier, SimGate
from gateway.sim.meters import MeterFleet, SiteLayout, reference_slice, shipped_profiles_dir
from gateway.sim.wand import SimWand
from gateway.supervisor import PartFactory
from gateway.sync.receiver import CentralReceiver
from gateway.web.patrol import qr_signature

DEMO_TOWERS = 2
HOUSEHOLD_POLL_S = 60.0
MAIN_POLL_S = 10.0
FAULT_AT_S = 30.0  # a building main stops answering …
FAULT_FOR_S = 60.0  # … for this long
FAULTY_METER = "B02-MAIN"
BARRIER_STUCK_AT_S = 90.0
REPORT_AT_S = 20.0  # a resident phones the guard room: water leaking (报修, P2)
ENTRAPMENT_AT_S = 45.0  # an elevator alarm contact closes (电梯困人, P1) …
ENTRAPMENT_FOR_S = 240.0  # … until the people are out
WAN_DOWN_AT_S = 120.0
WAN_DOWN_FOR_S = 60.0
PATROL_ROUTE = "DEMO"  # the route in demo-site.toml the schedule repeats
PATROL_WAND = "WAND-CRADLE-1"
PATROL_LEAD_S = 10  # the first round starts at least this long after the site file is written …
PATROL_GRID_S = 12  # … on a 12-s grid of the minute, so that every_min is 5.0, 5.2, … 5.8
PATROL_EVERY_MIN = 5
PATROL_SKIPPED = "CP04"  # the guard skips it in the first round: missed, and an alarm
PATROL_DOCK_AFTER = 3  # he drops the wand in the cradle after this many checkpoints …
PATROL_DOCK_WAIT_S = 15.0  # … and takes it again once downloaded (or after this long)
PATROL_PICKUP_S = 6.0  # he takes the wand from the cradle this long before a round
PATROL_LATE_S = 2.0  # and reaches each checkpoint this long after it is due


def demo_layout() -> SiteLayout:
    return reference_slice(
        DEMO_TOWERS,
        household_poll_s=HOUSEHOLD_POLL_S,
        main_poll_s=MAIN_POLL_S,
        site_id="yiyuan-demo",
        name="颐园世家（演示）",
        name_en="Yiyuan Shijia (demo)",
    )


DEMO_GATES = [
    SimGate("N-GATE-P1", "site/gates/N-GATE-P1"),
    SimGate("S-GATE-P1", "site/gates/S-GATE-P1"),
]
DEMO_BARRIERS = [
    SimBarrier("N-BAR-IN", "device/N-BAR-IN", "SURFACE", "in"),
    SimBarrier("N-BAR-OUT", "device/N-BAR-OUT", "SURFACE", "out"),
    SimBarrier("G-BAR-IN", "device/G-BAR-IN", "GARAGE", "in"),
    SimBarrier("G-BAR-OUT", "device/G-BAR-OUT", "GARAGE", "out"),
]


def _gates_toml(broker: Broker) -> str:
    """The site file's [mqtt], access points and car parks for the simulated gates."""
    points = "".join(
        f'\n[[devices.access_points]]\nid = "{g.id}"\nkind = "turnstile"\n'
        f'profile = "generic-json-gate"\ntopic_prefix = "{g.topic_prefix}"\n'
        for g in DEMO_GATES
    ) + "".join(
        f'\n[[devices.access_points]]\nid = "{b.id}"\nkind = "barrier"\n'
        f'profile = "lpr-camera-barrier"\ntopic_prefix = "{b.topic_prefix}"\nlot = "{b.lot}"\n'
        for b in DEMO_BARRIERS
    )
    return (
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
        + points
        + '\n[[parking.lots]]\nid = "SURFACE"\nname = "地面停车场"\nspaces = 125\n'
        "classes = { temporary = 40, monthly = 80, vip = 5 }\n"
        '\n[[parking.lots]]\nid = "GARAGE"\nname = "地下停车场"\nspaces = 546\n'
        "classes = { temporary = 46, monthly = 490, vip = 10 }\n"
    )


@dataclass(frozen=True)
class DemoPatrol:
    """When the demo's rounds start: every ``every_min`` all day, one at ``first``.

    A schedule's ``start`` is a minute of the day: the window opens on the whole
    minute ``every_min`` before ``first``, and ``every_min`` carries ``first``'s
    seconds (5.2 for :12). The tracker judges only rounds that start after it
    first runs, so the first one it judges starts seconds after the demo.
    """

    started: datetime
    """When the demo began (aware, site time): the ``[N s]`` of the printed lines."""
    first: datetime
    every_min: float

    @property
    def window_start(self) -> datetime:
        return self.first - timedelta(minutes=self.every_min)

    def schedule_toml(self) -> str:
        opens = f"{self.window_start:%H:%M}"
        return (
            f"\n# The demo's rounds, written at start: every {self.every_min:g} min all day "
            f"(end = start), the first at {self.first:%H:%M:%S}\n# — a real site walks "
            "every 2–4 hours. start_window_min: a round counts no scans of the one before.\n"
            f'[[patrol.schedules]]\nid = "{PATROL_ROUTE}-ALL-DAY"\nroute = "{PATROL_ROUTE}"\n'
            f'start = "{opens}"\nend = "{opens}"\nevery_min = {self.every_min!r}\n'
            "start_window_min = 0.5\n"
        )


def plan_patrol(zone: ZoneInfo, now: datetime | None = None) -> DemoPatrol:
    """Rounds from the next 12-s mark at least ``PATROL_LEAD_S`` from ``now``."""
    now = datetime.now(zone) if now is None else now.astimezone(zone)
    at = now + timedelta(seconds=PATROL_LEAD_S)
    minute = at.replace(second=0, microsecond=0)
    steps = math.ceil((at - minute).total_seconds() / PATROL_GRID_S)
    first = minute + timedelta(seconds=steps * PATROL_GRID_S)
    return DemoPatrol(now, first, round(PATROL_EVERY_MIN + first.second / 60, 1))


def write_demo_site(
    data_dir: Path,
    port: int,
    layout: SiteLayout,
    ports: dict[str, int],
    profiles_dir: Path,
    central: tuple[str, str],
    broker: Broker | None = None,
    patrol: DemoPatrol | None = None,
    wand: SimWand | None = None,
) -> tuple[Path, dict[str, str]]:
    """Write ``data_dir/demo-site.toml`` with fresh tokens; returns it and the tokens.

    ``central`` is the reference receiver's (base URL, site token); ``patrol`` the
    tour's timing (without it no round is scheduled); ``wand`` the simulated wand
    whose pty is the cradle. The patrol signing secret is fresh too."""
    base = resources.files("gateway.sim").joinpath("demo-site.toml").read_text(encoding="utf-8")
    parsed = tomllib.loads(base)
    tokens: dict[str, str] = {}
    for user in parsed.get("users", []):
        tokens[user["name"]] = token = new_token()
        base = base.replace(f'"{user["token_sha256"]}"', f'"{hash_token(token)}"', 1)
    placeholder = parsed.get("patrol", {}).get("signing_secret")
    if placeholder:
        base = base.replace(f'"{placeholder}"', f'"{secrets.token_hex(16)}"', 1)
    extra = f'{base.rstrip()}\n\n[api]\nhost = "127.0.0.1"\nport = {port}\n'
    extra += (
        f'\n[sync]\nbase_url = "{central[0]}"\ntoken = "{central[1]}"\n'
        "heartbeat_s = 10.0\npull_interval_s = 10.0\nbackoff_max_s = 10.0\n"
    )
    if broker is not None:
        extra += _gates_toml(broker)
    if patrol is not None:
        extra += patrol.schedule_toml()
    if wand is not None:
        extra += (
            "\n# The guard room's wand cradle: the simulated wand on a pseudo-terminal.\n"
            f'[[devices.patrol_wands]]\nid = "{PATROL_WAND}"\ndevice = "{wand.port}"\n'
            "baudrate = 9600\n"
        )
    path = data_dir.resolve() / "demo-site.toml"
    path.write_text(layout.site_toml(ports, profiles_dir=profiles_dir, extra=extra), "utf-8")
    return path, tokens


def _print_welcome(
    config: SiteConfig, url: str, tokens: dict[str, str], fleet: MeterFleet, central_url: str
) -> None:
    d = config.devices
    print(f"\nSite Gateway demo — {config.site.name} / {config.site.name_en}")
    print(
        f"  guard screen (岗亭监控):  {url}/   (sign in as guard / supervisor with a token below)"
    )
    print(f"  reports (报事报修):       {url}/reports")
    print(f"  API (OpenAPI docs):      {url}/docs")
    print(f"  sync status:             {url}/api/v1/sync   (needs a token)")
    print(f"  central system (sim):    {central_url}/")
    print(f"  health:                  {url}/healthz")
    patrol = config.patrol
    if patrol.checkpoints and patrol.signing_secret is not None:
        cp = patrol.checkpoints[0]
        signature = qr_signature(patrol.signing_secret.get_secret_value(), cp.id)
        print(f"  guard tour (巡更):        {url}/patrol   (the phone page; sign in as guard)")
        print(f"  checkpoint QR {cp.id:<10} {url}/p/{cp.id}?s={signature}   ({cp.name})")
    print(f"  metrics:                 {url}/metrics   (needs a token)")
    print(f"  journal:                 {config.journal.path}")
    print(f"  site file:               {config.source}")
    print(
        f"  simulated devices:       {len(d.meters)} meters, {len(d.io_modules)} I/O module "
        f"on {len(config.links)} Modbus TCP links at {fleet.host} "
        f"(started in {fleet.started_in_s:.2f} s)"
    )
    for name, token in tokens.items():
        print(f"  token for {name:<11} {token}")
    print("  Ctrl-C stops.\n", flush=True)


async def _scenario(fleet: MeterFleet, layout: SiteLayout, central: CentralReceiver) -> None:
    """The demo's script: a building main goes silent for a while; later the WAN."""
    victim = next(m for m in layout.meters if m.id == FAULTY_METER)
    await asyncio.sleep(FAULT_AT_S)
    await asyncio.to_thread(fleet.silence, victim.link, victim.unit)
    print(
        f"  [{FAULT_AT_S:.0f} s] simulated fault: meter {victim.id} stopped answering; "
        "it turns degraded, then offline (device.health events)",
        flush=True,
    )
    await asyncio.sleep(FAULT_FOR_S)
    await asyncio.to_thread(fleet.heal, victim.link, victim.unit)
    print(
        f"  [{FAULT_AT_S + FAULT_FOR_S:.0f} s] meter {victim.id} answers again "
        "(seen at the gateway's next retry of an offline device)",
        flush=True,
    )
    await asyncio.sleep(WAN_DOWN_AT_S - FAULT_AT_S - FAULT_FOR_S)
    await asyncio.to_thread(central.down_for, WAN_DOWN_FOR_S)
    print(
        f"  [{WAN_DOWN_AT_S:.0f} s] simulated WAN loss for {WAN_DOWN_FOR_S:.0f} s: readings "
        "wait in the outbox (see /api/v1/sync), then drain; central counts each once",
        flush=True,
    )
    await asyncio.Event().wait()  # a part runs until cancelled


async def _entrapment(fleet: MeterFleet, layout: SiteLayout) -> None:
    """Someone is stuck in lift B01-L1: the alarm engine raises a P1 with the plan's steps."""
    module, contact = layout.find_input("elevator_alarm", "B01-L1")
    await asyncio.sleep(ENTRAPMENT_AT_S)
    await asyncio.to_thread(fleet.set_input, module.link, module.unit, contact.number, True)
    print(
        f"  [{ENTRAPMENT_AT_S:.0f} s] simulated emergency: elevator alarm B01-L1 (电梯困人, P1) "
        "— see /api/v1/alarms; acknowledge it before its respond-by time",
        flush=True,
    )
    await asyncio.sleep(ENTRAPMENT_FOR_S)
    await asyncio.to_thread(fleet.set_input, module.link, module.unit, contact.number, False)
    await asyncio.Event().wait()


async def _resident_calls(api: list[str], guard_token: str) -> None:
    """A resident phones in a leak; the guard on duty takes the report and sends the
    plumber, as on /reports (through the API, under the guard's own token). Nobody
    marks the plumber on scene, so the report turns overdue at 15 min and the plan's
    P2 alarm follows."""
    await asyncio.sleep(REPORT_AT_S)
    report = {
        "category": "repair",
        "subcategory": "water",
        "urgency": "P2",
        "description": "厨房水管接头漏水,已关总阀 / kitchen pipe joint leaking, mains shut",
        "building": "B01",
        "unit": "1-1202",
        "channel": "phone",
        "contact_name": "王女士",
        "contact_phone": "13900001111",
    }
    headers = {"Authorization": f"Bearer {guard_token}"}
    async with httpx.AsyncClient(base_url=api[0], headers=headers, timeout=10) as client:
        taken = (await client.post("/api/v1/reports", json=report)).json()
        await client.post(
            f"/api/v1/reports/{taken['report_id']}/dispatch", json={"to": "工程部 水电工 李师傅"}
        )
    print(
        f"  [{REPORT_AT_S:.0f} s] a resident phoned in a leak: report {taken['report_id']} "
        "(报修, P2, on scene within 15 min), plumber dispatched — see /reports",
        flush=True,
    )
    await asyncio.Event().wait()


async def _gate_traffic(traffic: GateTraffic) -> None:
    """The compound's gates and barriers, at several times real traffic so the
    screen moves; the garage's entry arm jams at 90 s."""
    zone = ZoneInfo("Asia/Shanghai")
    started = asyncio.get_running_loop().time()
    stuck = False
    while True:
        now = datetime.now(zone)
        await asyncio.to_thread(traffic.minute, now, 600.0, 240.0)
        await asyncio.to_thread(traffic.keep_alives, now)
        if not stuck and asyncio.get_running_loop().time() - started > BARRIER_STUCK_AT_S:
            stuck = True
            await asyncio.to_thread(traffic.barrier_stuck, DEMO_BARRIERS[2])
            print(
                f"  [{BARRIER_STUCK_AT_S:.0f} s] simulated fault: barrier G-BAR-IN jammed "
                "(barrier.fault); a remote raise is now refused",
                flush=True,
            )
        await asyncio.sleep(5.0)


async def _sleep_until(when: datetime) -> None:
    await asyncio.sleep(max(0.0, (when - datetime.now(when.tzinfo)).total_seconds()))


async def _dock(wand: SimWand) -> bool:
    """Put the wand in the cradle; whether the gateway downloaded and cleared it in time."""
    wand.docked = True
    for _ in range(round(PATROL_DOCK_WAIT_S / 0.5)):
        if not wand.records:
            return True
        await asyncio.sleep(0.5)
    return not wand.records


async def _patrol(wand: SimWand, settings: PatrolSettings, plan: DemoPatrol) -> None:
    """A guard walks every round with the wand (a demo: one checkpoint every 12 s).

    He takes the wand from the cradle and reads his personnel card, reads each
    checkpoint's chip just after it is due, and drops the wand in the cradle
    after ``PATROL_DOCK_AFTER`` checkpoints (the gateway downloads it; he reads
    his card again when he takes it back) and at the end. In the first round he
    skips ``PATROL_SKIPPED``: the tracker finds it missed when it judges the round."""
    route = next(r for r in settings.routes if r.id == PATROL_ROUTE)
    guard = settings.guards[0]
    card = guard.cards[0]
    chips = {c.id: c.tags[0] for c in settings.checkpoints if c.tags}
    skip = settings.checkpoint(PATROL_SKIPPED)
    zone = plan.first.tzinfo
    judge_after = timedelta(minutes=float(settings.judge_after_min))
    start, first = plan.first, True

    def say(text: str) -> None:
        elapsed = (datetime.now(zone) - plan.started).total_seconds()
        print(f"  [{elapsed:.0f} s] patrol: {text}", flush=True)

    while True:
        stops = [
            s
            for s in route.stops
            if s.checkpoint in chips and not (first and skip and s.checkpoint == skip.id)
        ]
        await _sleep_until(start - timedelta(seconds=PATROL_PICKUP_S))
        wand.docked = False
        wand.add_scan(card, wand.clock)
        if first:
            skipped = f"; checkpoint {skip.id} {skip.name} will be skipped" if skip else ""
            say(
                f"guard {guard.name} ({guard.id}) takes the wand, reads his card and walks round "
                f"{PATROL_ROUTE}-ALL-DAY@{start:%Y%m%dT%H%M} ({len(route.stops)} checkpoints "
                f"from {start:%H:%M:%S}, then every {plan.every_min:g} min){skipped}"
            )
        for i, stop in enumerate(stops, start=1):
            due = start + timedelta(minutes=float(stop.offset_min))
            await _sleep_until(due + timedelta(seconds=PATROL_LATE_S))
            wand.add_scan(chips[stop.checkpoint], wand.clock)
            if i % PATROL_DOCK_AFTER and i < len(stops):
                continue
            downloaded = await _dock(wand)
            if first:
                how = "downloaded and cleared" if downloaded else "not downloaded yet"
                if i < len(stops):
                    say(
                        f"wand docked after {i} checkpoints: {how} "
                        "(patrol.guard_login, patrol.scan on the journal)"
                    )
                else:
                    closes = max(
                        start + timedelta(minutes=float(s.offset_min) + float(s.deviation_min))
                        for s in route.stops
                    )
                    missed, findings = "", "patrol.round_finished"
                    if skip:
                        missed = f"checkpoint {skip.id} {skip.name} skipped; "
                        findings = "patrol.checkpoint_missed, alarm patrol_missed 巡更点漏巡"
                    say(
                        f"round walked, {missed}wand docked: {how}. Judged at "
                        f"{closes + judge_after:%H:%M:%S} ({findings}); "
                        "see the guard screen's 巡更 panel"
                    )
            if i < len(stops):
                wand.docked = False
                wand.add_scan(card, wand.clock)
        start += timedelta(minutes=plan.every_min)
        first = False


def _start_wand(zone: ZoneInfo) -> SimWand | None:
    """The simulated patrol wand in its cradle, or None (with a line saying why)."""
    try:
        return SimWand(zone=zone).start()
    except OSError as exc:
        print(f"  (no patrol wand in this demo: cannot open a pseudo-terminal: {exc})", flush=True)
        return None


def _restart_tour(journal: Path) -> None:
    """Judge rounds from this run on: each run writes a new schedule, and the
    tracker would otherwise judge its rounds back to the journal's first run
    (all "not started")."""
    if not journal.exists():
        return
    with contextlib.closing(sqlite3.connect(journal)) as conn, conn:
        try:
            conn.execute("DELETE FROM sync_cursors WHERE name = 'patrol.since'")
        except sqlite3.OperationalError:  # a journal file without tables yet
            pass


def _start_broker(stack: contextlib.ExitStack) -> Broker | None:
    """The embedded broker for the gates, or None (with a line saying why)."""
    try:
        return stack.enter_context(run_broker(max_inflight=1000))
    except (BrokerUnavailable, BrokerStartError, ImportError, OSError) as exc:
        print(f"  (no gates in this demo: cannot start an MQTT broker: {exc})", flush=True)
        return None


def run_demo(*, duration: float | None, port: int, data_dir: Path) -> int:
    """Run the demo until Ctrl-C, or for ``duration`` seconds; print a summary."""
    profiles_dir = shipped_profiles_dir()
    layout = demo_layout()
    fleet = MeterFleet.for_layout(layout, load_profiles(profiles_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    central_token = new_token()
    central = CentralReceiver(data_dir / "central.db", sites={layout.site_id: central_token})
    fleet.start()
    stack = contextlib.ExitStack()
    traffic: GateTraffic | None = None
    wand: SimWand | None = None
    try:
        broker = _start_broker(stack)
        wand = _start_wand(ZoneInfo(layout.timezone))
        central_url = central.start()
        tour = plan_patrol(ZoneInfo(layout.timezone))
        site_file, tokens = write_demo_site(
            data_dir,
            port,
            layout,
            fleet.ports(),
            profiles_dir,
            (central_url, central_token),
            broker,
            tour,
            wand,
        )
        config = load_site_config(site_file)
        seq_before = _last_seq(config.journal.path)
        _restart_tour(config.journal.path)
        api: list[str] = []  # the gateway's URL, once it is serving
        parts: list[tuple[str, PartFactory]] = [
            ("simulator", lambda: _scenario(fleet, layout, central)),
            ("emergencies", lambda: _entrapment(fleet, layout)),
            ("resident-calls", lambda: _resident_calls(api, tokens["guard"])),
        ]
        if wand is not None:
            guard_wand = wand
            parts.append(("patrol-simulator", lambda: _patrol(guard_wand, config.patrol, tour)))
        if broker is not None:
            traffic = GateTraffic(
                broker.host,
                broker.port,
                broker.username,
                broker.password,
                DEMO_GATES,
                DEMO_BARRIERS,
                seed=int(datetime.now().timestamp()),
            )
            traffic.start()
            gates = traffic
            parts.append(("gate-simulator", lambda: _gate_traffic(gates)))

        def ready(url: str) -> None:
            api.append(url)
            _print_welcome(config, url, tokens, fleet, central_url)

        async def main() -> tuple[RunSummary, list[DeviceHealth]]:
            service = GatewayService(
                config,
                on_ready=ready,
                extra_parts=parts,
            )
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, service.stop.set)
            summary = await service.run()
            return summary, service.devices()

        summary, devices = asyncio.run(main())
        requests = fleet.requests()
        stored = central.stats()["readings"]["stored"]
    finally:
        if traffic is not None:
            traffic.stop()
        if wand is not None:
            wand.close()
        fleet.stop()
        central.stop()
        stack.close()
    total, this_run, readings, raised = _count(config.journal.path, seq_before)
    _print_summary(config, summary, (this_run, total), readings, devices, requests)
    print(f"  alarms:          {raised} raised (see the guard screen and /api/v1/alarms)")
    if traffic is not None:
        print(
            f"  gates:           {traffic.published} messages from the simulated gates and "
            "barriers (see /api/v1/parking)"
        )
    print(f"  sync:            central holds {stored} readings from this site (all runs)")
    if config.patrol.checkpoints:
        patrol = _patrol_counts(config.journal.path, seq_before)
        print(
            f"  patrol:          {patrol['patrol.scan']} scans, "
            f"{patrol['patrol.round_finished'] + patrol['patrol.round_not_started']} rounds "
            f"judged, {patrol['patrol.checkpoint_missed']} checkpoints missed this run "
            "(see /api/v1/patrol/status)"
        )
    return 0


def _print_summary(
    config: SiteConfig,
    summary: RunSummary,
    events: tuple[int, int],
    readings: int,
    devices: list[DeviceHealth],
    requests: int,
) -> None:
    parts = ", ".join(f"{name} {h.state.value}" for name, h in summary.parts.items())
    states = Counter(device.state.value for device in devices)
    unpolled = f" ({states['unknown']} not polled yet)" if states["unknown"] else ""
    print(f"\nSite Gateway demo — summary ({summary.seconds:.0f} s)")
    print(f"  events ingested: {events[0]} this run, {events[1]} in the journal")
    print(f"  parts:           {parts}")
    print(f"  devices:         {len(config.device_ids())} configured")
    print(
        "  devices online/degraded/offline: "
        f"{states['online']}/{states['degraded']}/{states['offline']}{unpolled}"
    )
    print(f"  meter readings:  {readings} this run")
    print(f"  simulator:       {requests} Modbus requests answered or ignored")


def _last_seq(path: Path) -> int:
    """The journal's last event sequence number (0 if there is no journal yet)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # a journal file without tables yet
        return 0
    finally:
        conn.close()


def _count(path: Path, after_seq: int) -> tuple[int, int, int, int]:
    """(events in the journal, events after ``after_seq``, meter readings and
    alarms raised after it).

    Counted in the journal: ``RunSummary.events_this_run`` leaves out what the
    meter book writes itself (readings go in with their baselines).
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        this_run, readings, raised = conn.execute(
            "SELECT count(*), coalesce(sum(kind = 'meter.reading'), 0), "
            "coalesce(sum(kind = 'alarm.raised'), 0) FROM events WHERE seq > ?",
            (after_seq,),
        ).fetchone()
        return count_events(conn), int(this_run), int(readings), int(raised)
    finally:
        conn.close()


def _patrol_counts(path: Path, after_seq: int) -> Counter[str]:
    """Patrol events after ``after_seq`` by kind."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT kind, count(*) FROM events WHERE seq > ? AND kind LIKE 'patrol.%' "
            "GROUP BY kind",
            (after_seq,),
        ).fetchall()
        return Counter({str(kind): int(n) for kind, n in rows})
    finally:
        conn.close()
