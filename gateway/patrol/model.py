"""The guard tour (巡更) as configuration: checkpoints, routes, schedules, guards.

A site file's ``[patrol]`` section. Checkpoints carry every way a guard can
prove they were there: NFC tag UIDs and wand chip ids (``tags``), a typed
``code``, a door ``reader`` where a patrol card swipe counts, and the signed
QR URL the gateway prints for it. Routes say which checkpoints, in which
order (strict, free or random), at what planned offset from the round's start
and with what allowed deviation. Schedules repeat a route through a daily
window; a window may cross midnight (night rounds 22:00–06:00).
Defaults follow ../shared/research/PATROL_GATES.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, StrictFloat, StrictInt

from gateway.config_base import Ident, _HasSecrets, _Section


def _clock(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError("is not a time of day (HH:MM, 00:00–23:59)")
    return value


def _tag(value: str) -> str:
    if not re.fullmatch(r"[0-9A-Za-z:_-]{4,64}", value):
        raise ValueError("is not a tag id (4–64 letters, digits, ':', '_' or '-')")
    return value.upper().replace(":", "")


Clock = Annotated[str, AfterValidator(_clock)]
Tag = Annotated[str, AfterValidator(_tag)]
Minutes = Annotated[StrictFloat | StrictInt, Field(ge=0, le=24 * 60)]


class Checkpoint(_Section):
    id: Ident
    name: str = Field(min_length=1)
    name_en: str | None = None
    location: str | None = None
    building: str | None = None
    tags: list[Tag] = []
    code: Annotated[str, Field(pattern=r"^[0-9A-Za-z]{3,12}$")] | None = None
    """Typed by the guard when no tag can be read; the id when not set."""
    reader: Ident | None = None
    """An access point whose reader counts a patrol-card swipe as a scan here."""
    near: list[Ident] = []
    """Devices (doors, perimeter zones' I/O modules) this checkpoint is the nearest to:
    an alarm on one of them sends a guard here (alarm-driven patrol)."""


class RouteStop(_Section):
    checkpoint: Ident
    offset_min: Minutes = 0
    deviation_min: Minutes = 5


class Route(_Section):
    id: Ident
    name: str = Field(min_length=1)
    name_en: str | None = None
    order: Literal["strict", "free", "random"] = "free"
    stops: list[RouteStop] = Field(min_length=1)
    min_gap_s: Annotated[StrictFloat | StrictInt, Field(ge=0)] = 20


class Schedule(_Section):
    """Rounds of ``route`` every ``every_min`` from ``start`` until ``end`` (site time)."""

    id: Ident
    route: Ident
    start: Clock
    end: Clock
    every_min: Annotated[StrictFloat | StrictInt, Field(gt=0, le=24 * 60)]
    start_window_min: Minutes = 10


class PatrolGuard(_Section):
    id: Ident
    name: str = Field(min_length=1)
    cards: list[Tag] = []
    """Personnel cards: the wand's personnel point, a patrol card at a door reader."""


class PatrolSettings(_HasSecrets):
    checkpoints: list[Checkpoint] = []
    routes: list[Route] = []
    schedules: list[Schedule] = []
    guards: list[PatrolGuard] = []
    signing_secret: SecretStr | None = None
    """Signs each checkpoint's QR URL, so a forged or edited URL is refused."""
    duplicate_s: Annotated[StrictFloat | StrictInt, Field(ge=0)] = 60
    burst_scans: Annotated[StrictInt, Field(ge=2)] = 8
    burst_window_s: Annotated[StrictFloat | StrictInt, Field(gt=0)] = 600
    skew_s: Annotated[StrictFloat | StrictInt, Field(gt=0)] = 120
    escalate_below_pct: Annotated[StrictFloat | StrictInt, Field(ge=0, le=100)] = 70
    judge_after_min: Annotated[StrictFloat | StrictInt, Field(ge=0, le=24 * 60)] = 15
    """Rounds are judged this long after they close: late phone queues and wand
    downloads still count. Scans uploaded after the judgement are flagged."""
    tasks: dict[Ident, Annotated[StrictFloat | StrictInt, Field(gt=0, le=240)]] = {
        "perimeter_intrusion": 10,
        "door_forced": 10,
    }
    """Alarm type → minutes: such an alarm sends a guard to scan the nearest checkpoint."""

    def checkpoint(self, checkpoint_id: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.id == checkpoint_id), None)


def patrol_checks(
    patrol: PatrolSettings, access_points: set[str], devices: set[str], source: str
) -> list[str]:
    """Cross-checks: unique ids and tags, routes and schedules naming what exists."""
    problems: list[str] = []
    key = f"{source}: patrol"
    checkpoints = {c.id for c in patrol.checkpoints}
    sections: dict[str, list[str]] = {
        "checkpoints": [c.id for c in patrol.checkpoints],
        "routes": [r.id for r in patrol.routes],
        "schedules": [s.id for s in patrol.schedules],
        "guards": [g.id for g in patrol.guards],
    }
    for name, ids in sections.items():
        first: dict[str, int] = {}
        for i, ident in enumerate(ids):
            if ident in first:
                problems.append(
                    f'{key}.{name}[{i}].id: "{ident}" is already used by {name}[{first[ident]}]'
                )
            first.setdefault(ident, i)
    owner: dict[str, str] = {}
    for i, cp in enumerate(patrol.checkpoints):
        for j, tag in enumerate(cp.tags):
            where = f"checkpoints[{i}].tags[{j}]"
            if tag in owner:
                problems.append(f'{key}.{where}: "{tag}" is already the tag of {owner[tag]}')
            owner.setdefault(tag, where)
        for j, device in enumerate(cp.near):
            if device not in devices:
                problems.append(
                    f'{key}.checkpoints[{i}].near[{j}]: "{device}" is not a configured device'
                )
        if cp.reader is not None and cp.reader not in access_points:
            problems.append(
                f'{key}.checkpoints[{i}].reader: "{cp.reader}" is not a configured access point'
            )
    for i, guard in enumerate(patrol.guards):
        for j, card in enumerate(guard.cards):
            if card in owner:
                problems.append(
                    f'{key}.guards[{i}].cards[{j}]: "{card}" is already the tag of {owner[card]}'
                )
            owner.setdefault(card, f"guards[{i}].cards[{j}]")
    routes = {r.id for r in patrol.routes}
    for i, route in enumerate(patrol.routes):
        seen: set[str] = set()
        for j, stop in enumerate(route.stops):
            if stop.checkpoint not in checkpoints:
                problems.append(
                    f'{key}.routes[{i}].stops[{j}].checkpoint: "{stop.checkpoint}" '
                    "is not a checkpoint"
                )
            if stop.checkpoint in seen:
                problems.append(
                    f'{key}.routes[{i}].stops[{j}].checkpoint: "{stop.checkpoint}" '
                    "is on the route twice"
                )
            seen.add(stop.checkpoint)
    for i, schedule in enumerate(patrol.schedules):
        if schedule.route not in routes:
            problems.append(f'{key}.schedules[{i}].route: "{schedule.route}" is not a route')
    if patrol.checkpoints and patrol.signing_secret is None:
        problems.append(
            f"{key}.signing_secret: required key is missing (it signs the checkpoints' QR URLs; "
            'e.g. "env:GATEWAY_PATROL_SECRET")'
        )
    return problems
