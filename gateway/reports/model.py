"""Guard-room reports (报事/报修) as configuration and as a record.

A site file's ``[reports]`` section says which categories a guard can choose
(repair / complaint / security / other, each with sub-categories), which of
them need a follow-up call to the resident before they may close (回访: 100 %
of complaints, ../shared/DOMAIN.md), and the service commitments per urgency
(对客服务承诺: P1 on site within 10 minutes, P2 within 15, P3 the same day or
at the time agreed with the resident). Every number is config, because each
property company writes its own commitments.

A :class:`Report` is the whole state of one report as the journal stores it.
The resident's name and phone are *not* in it: they live in their own table
and reach the API only for a supervisor, audited (客户档案管理制度).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictFloat

from gateway.config_base import Ident, _Section

Urgency = Literal["P1", "P2", "P3"]
URGENCIES: tuple[Urgency, ...] = ("P1", "P2", "P3")

# A report's states: open → dispatched → on_scene → resolved → closed; cancelled for a
# duplicate or withdrawn report. A follow-up that finds the resident unsatisfied reopens.
INCIDENT_STATE = {
    "open": "open",
    "dispatched": "acknowledged",
    "on_scene": "acknowledged",
    "resolved": "resolved",
    "closed": "closed",
    "cancelled": "closed",
}
"""A report's state in the central contract's words (open | acknowledged | resolved | closed)."""

FollowUpResult = Literal["satisfied", "unsatisfied", "unreachable"]
"""How the call back to the resident (回访) went."""


def _clock(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError("is not a time of day (HH:MM, 00:00–23:59)")
    return value


class Subcategory(_Section):
    id: Ident
    name: str = Field(min_length=1)
    name_en: str = Field(min_length=1)


class Category(_Section):
    id: Ident
    name: str = Field(min_length=1)
    name_en: str = Field(min_length=1)
    follow_up: bool = False
    """A follow-up call to the resident is required before the report may close."""
    subcategories: list[Subcategory] = Field(min_length=1)


class Commitment(_Section):
    """How soon someone must be on scene for one urgency."""

    name: str = Field(min_length=1)
    name_en: str = Field(min_length=1)
    on_scene_min: Annotated[StrictFloat, Field(gt=0, le=7 * 24 * 60)] | None = None
    """Minutes from the report to someone on scene (P1, P2)."""
    same_day_until: Annotated[str, AfterValidator(_clock)] | None = None
    """Otherwise: by this time of the day it was reported (the next day's, when
    reported after it), unless a time is agreed with the resident (P3)."""


def _sub(id_: str, name: str, name_en: str) -> Subcategory:
    return Subcategory(id=id_, name=name, name_en=name_en)


DEFAULT_CATEGORIES = [
    Category(
        id="repair",
        name="报修",
        name_en="Repair",
        subcategories=[
            _sub("water", "水管/漏水", "Plumbing / leak"),
            _sub("power", "电路/停电", "Electrical / no power"),
            _sub("lighting", "照明", "Lighting"),
            _sub("door_lock", "门/门禁/锁", "Door, access or lock"),
            _sub("elevator", "电梯", "Elevator"),
            _sub("barrier", "道闸/停车", "Barrier / parking"),
            _sub("public_facility", "公共设施", "Public facility"),
        ],
    ),
    Category(
        id="complaint",
        name="投诉",
        name_en="Complaint",
        follow_up=True,
        subcategories=[
            _sub("noise", "噪音", "Noise"),
            _sub("sanitation", "环境卫生", "Cleanliness"),
            _sub("parking", "停车秩序", "Parking"),
            _sub("service", "服务态度", "Staff conduct"),
            _sub("neighbour", "邻里纠纷", "Neighbour dispute"),
        ],
    ),
    Category(
        id="security",
        name="安全",
        name_en="Security",
        subcategories=[
            _sub("suspicious", "可疑人员", "Suspicious person"),
            _sub("dispute", "纠纷/打架", "Fight or dispute"),
            _sub("lost_found", "失物/寻人", "Lost and found"),
            _sub("hazard", "安全隐患", "Hazard"),
        ],
    ),
    Category(
        id="other",
        name="其他",
        name_en="Other",
        subcategories=[_sub("other", "其他", "Other")],
    ),
]

DEFAULT_COMMITMENTS: dict[Urgency, Commitment] = {
    "P1": Commitment(name="特急", name_en="Very urgent", on_scene_min=10),
    "P2": Commitment(name="急", name_en="Urgent", on_scene_min=15),
    "P3": Commitment(name="一般", name_en="Normal", same_day_until="22:00"),
}


class ReportSettings(_Section):
    """The ``[reports]`` section (all optional: the defaults are the seeds' commitments)."""

    categories: list[Category] = DEFAULT_CATEGORIES
    commitments: dict[Urgency, Commitment] = DEFAULT_COMMITMENTS
    watch_interval_s: Annotated[StrictFloat, Field(gt=0, le=300)] = 5.0

    def category(self, category_id: str) -> Category | None:
        return next((c for c in self.categories if c.id == category_id), None)

    def names(self, category_id: str, subcategory_id: str) -> tuple[str, str, str, str]:
        """Category and sub-category names (zh, en, zh, en); the ids when unknown
        (a report kept after its category left the config)."""
        category = self.category(category_id)
        sub = next(
            (s for s in (category.subcategories if category else []) if s.id == subcategory_id),
            None,
        )
        return (
            category.name if category else category_id,
            category.name_en if category else category_id,
            sub.name if sub else subcategory_id,
            sub.name_en if sub else subcategory_id,
        )


def report_checks(reports: ReportSettings, source: str) -> list[str]:
    """Cross-checks pydantic cannot express: unique ids, every urgency committed."""
    problems: list[str] = []
    key = f"{source}: reports"
    seen: set[str] = set()
    for i, cat in enumerate(reports.categories):
        if cat.id in seen:
            problems.append(f"{key}.categories[{i}].id: {cat.id!r} is used twice")
        seen.add(cat.id)
        subs = [s.id for s in cat.subcategories]
        for dup in sorted({s for s in subs if subs.count(s) > 1}):
            problems.append(f"{key}.categories[{i}].subcategories: {dup!r} is used twice")
    for urgency in URGENCIES:
        commitment = reports.commitments.get(urgency)
        if commitment is None:
            problems.append(f"{key}.commitments.{urgency}: missing (every urgency needs one)")
        elif (commitment.on_scene_min is None) == (commitment.same_day_until is None):
            problems.append(
                f"{key}.commitments.{urgency}: set exactly one of on_scene_min and same_day_until"
            )
    return problems


@dataclass
class Step:
    """One line of a report's timeline: what happened, who did it, when."""

    at: str
    what: str
    by: str
    to: str | None = None
    note: str | None = None


@dataclass
class Report:
    """One report's whole state (the resident's contact is kept apart)."""

    report_id: str
    category: str
    subcategory: str
    urgency: Urgency
    description: str
    building: str | None
    unit: str | None
    area: str | None
    channel: str
    reporter_kind: str
    reporter_masked: str | None
    created_at: str
    created_by: str
    respond_by: str
    agreed_time: str | None
    owner: str
    state: str = "open"
    handler: str | None = None
    supervisor: str | None = None
    on_scene_at: str | None = None
    resolved_at: str | None = None
    follow_up_at: str | None = None
    follow_up_result: str | None = None
    follow_up_required: bool = False
    closed_at: str | None = None
    overdue_at: str | None = None
    revision: int = 0
    timeline: list[Step] = field(default_factory=list)

    @property
    def location(self) -> str:
        """Where, as a guard would write it: building and unit, or the public area."""
        parts = [p for p in (self.building, self.unit, self.area) if p]
        return " ".join(parts)

    @property
    def follow_up_done(self) -> bool:
        return self.follow_up_result == "satisfied"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        steps = [Step(**s) for s in data.get("timeline", [])]
        return cls(**{**data, "timeline": steps})
