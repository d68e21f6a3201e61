"""The contingency plan: the shipped default, and one exact line per problem.

The shipped plan must load and cover every alarm type the gateway raises, in
Chinese and English, with steps. A broken plan must name file, key path and
value in each problem line, because that line is all a site engineer sees.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.alarms import plan as plan_module
from gateway.alarms.plan import MatchRule, Plan, load_plan
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config" / "contingency-plan.toml"
DOC = ROOT / "docs" / "alarms.md"

TYPES = {
    "fire_alarm": "P1",
    "elevator_entrapment": "P1",
    "gas_leak": "P1",
    "flooding_plant_room": "P1",
    "power_outage": "P1",
    "generator_failure": "P1",
    "water_outage": "P2",
    "sump_high": "P2",
    "perimeter_intrusion": "P2",
    "barrier_fault": "P2",
    "door_forced": "P3",
    "door_held_open": "P3",
    "patrol_missed": "P3",
    "patrol_late": "P3",
    "patrol_out_of_order": "P3",
    "device_offline": "P3",
    "planned_outage": "P4",
    "duress_card": "P1",
    "sync_fault": "P3",
    "patrol_early": "P3",
    "patrol_round_failed": "P2",
    "patrol_suspicious": "P3",
    "guard_panic": "P1",
    "patrol_report": "P3",
    "report_overdue_urgent": "P1",
    "report_overdue": "P2",
    "report_overdue_normal": "P3",
    "storage_low": "P2",
    "clock_step": "P3",
}
WITH_INCIDENT = {
    "fire_alarm",
    "elevator_entrapment",
    "gas_leak",
    "flooding_plant_room",
    "power_outage",
    "water_outage",
    "generator_failure",
    "sump_high",
    "perimeter_intrusion",
    "barrier_fault",
    "device_offline",
    "patrol_report",
}


# ---- the shipped plan ------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Plan:
    return load_plan()


def test_the_default_path_is_the_shipped_file(shipped: Plan) -> None:
    assert plan_module.shipped_plan_path() == SHIPPED
    assert load_plan(SHIPPED) == shipped


def test_every_type_is_there_with_names_and_steps(shipped: Plan) -> None:
    assert set(shipped.types) == set(TYPES)
    for name, priority in TYPES.items():
        kind = shipped.types[name]
        assert kind.priority == priority, name
        assert re.search(r"[\u4e00-\u9fff]", kind.name), f"{name}: no Chinese name"
        assert kind.name_en.isascii(), name
        assert kind.steps, f"{name}: no steps"
        for step in kind.steps:
            assert re.search(r"[\u4e00-\u9fff]", step.zh), (name, step.zh)
            assert step.en.isascii(), (name, step.en)


def test_every_p1_escalates_to_the_shift_leader_within_60_s(shipped: Plan) -> None:
    p1 = [name for name, kind in shipped.types.items() if kind.priority == "P1"]
    assert len(p1) == 9
    for name in p1:
        kind = shipped.types[name]
        assert kind.ack_within_s is not None and kind.ack_within_s <= 60, name
        first = kind.escalation[0]
        assert (first.level, first.after_s <= 60) == ("shift_leader", True), name
        ladder = [step.level for step in kind.escalation]
        assert ladder == ["shift_leader", "security_supervisor", "project_manager"], name


def test_the_plan_commitments(shipped: Plan) -> None:
    types = shipped.types
    assert types["fire_alarm"].on_scene_within_s == 180
    assert types["elevator_entrapment"].on_scene_within_s == 1800
    assert "30分钟" in (types["elevator_entrapment"].commitment or "")
    assert "30 minutes" in (types["elevator_entrapment"].commitment_en or "")
    assert types["power_outage"].on_scene_within_s == 300
    assert {name for name, kind in types.items() if kind.incident} == WITH_INCIDENT
    assert types["power_outage"].utility == "electricity"
    assert types["water_outage"].utility == "water"
    assert types["barrier_fault"].raise_to_p1_during == ["fire_alarm"]
    assert types["fire_alarm"].actions == ["release_gates", "raise_barriers", "open_incident"]
    assert [level.name for level in shipped.levels] == ["值班保安", "领班", "保安主管", "项目经理"]


def test_only_the_confirmed_fire_runs_the_linkage(shipped: Plan) -> None:
    fire_rules = {rule.id: rule for rule in shipped.rules if rule.type == "fire_alarm"}
    assert {rule_id for rule_id, rule in fire_rules.items() if rule.actions} == {"fire-confirmed"}
    confirmed = shipped.rule("fire-confirmed")
    assert confirmed.kind == "all_of"
    assert set(confirmed.signals) == set(fire_rules) - {"fire-confirmed"}


def test_rules_are_generic_and_every_type_has_a_rule(shipped: Plan) -> None:
    for rule in shipped.rules:
        assert "id" not in rule.devices, f"{rule.id} names one device"
    raised = {rule.type for rule in shipped.rules}
    assert raised == set(TYPES)
    assert shipped.rule("device-offline").suppressed_by == ["building-power"]
    sync = shipped.rule("sync-auth-failed")
    assert isinstance(sync, MatchRule) and sync.instance == []  # one alarm for the site


# ---- broken plans ----------------------------------------------------------------

MINIMAL = """\
[plan]
name = "测试预案"
name_en = "Test plan"
shifts = ["08:00", "20:00"]

[[levels]]
id = "guard_on_duty"
name = "值班保安"
name_en = "Guard on duty"

[[levels]]
id = "shift_leader"
name = "领班"
name_en = "Shift leader"

[types.fire_alarm]
name = "火警"
name_en = "Fire alarm"
priority = "P1"
actions = ["release_gates", "raise_barriers"]
escalation = [{ level = "guard_on_duty", after_s = 30 }, { level = "shift_leader", after_s = 60 }]

[types.power_outage]
name = "停电"
name_en = "Power outage"
priority = "P1"

[[rules]]
id = "panel"
kind = "match"
type = "fire_alarm"
event = ["io.input"]
when = { meaning = "fire_panel_alarm" }
active_field = "abnormal"
actions = false

[[rules]]
id = "detector"
kind = "match"
type = "fire_alarm"
event = ["detector.alarm"]
actions = false

[[rules]]
id = "confirmed"
kind = "all_of"
type = "fire_alarm"
signals = ["panel", "detector"]

[[rules]]
id = "building-power"
kind = "aggregate"
type = "power_outage"
group_by = "building"
down_when = ["offline"]
"""


def with_rule(text: str) -> str:
    """A fifth rule (rules[4]) appended to the minimal plan."""
    return MINIMAL + "\n[[rules]]\n" + text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text, encoding="utf-8")
    return path


def the_problem(path: Path) -> str:
    """The one problem reported for ``path`` (fails if there are more or none)."""
    with pytest.raises(ConfigError) as info:
        load_plan(path)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def test_the_minimal_plan_is_valid(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, MINIMAL))
    assert len(plan.rules) == 4


def replaced(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new, 1)


BROKEN = {
    "unknown key": (
        replaced('priority = "P1"', 'priority = "P1"\ncolour = "red"'),
        ["types.fire_alarm.colour: unknown key", "docs/alarms.md"],
    ),
    "priority P9": (
        replaced('priority = "P1"', 'priority = "P9"'),
        ['types.fire_alarm.priority: "P9"', "'P1', 'P2', 'P3' or 'P4'"],
    ),
    "escalation to an unknown level": (
        replaced('level = "shift_leader"', 'level = "night_boss"'),
        ['types.fire_alarm.escalation[1].level: "night_boss" is not a level', "shift_leader"],
    ),
    "escalation timers not increasing": (
        replaced("after_s = 60 }", "after_s = 30 }"),
        ["types.fire_alarm.escalation[1].after_s: 30 must be later than the level before it"],
    ),
    "rule of an unknown type": (
        with_rule('id = "quake"\nkind = "match"\ntype = "earthquake"\nevent = ["io.input"]\n'),
        ['rules[4].type: "earthquake" is not an alarm type of this plan', "power_outage"],
    ),
    "unknown rule kind": (
        with_rule('id = "x"\nkind = "regex"\ntype = "power_outage"\nevent = ["io.input"]\n'),
        ['rules[4].kind: "regex" is not a rule kind', "match, threshold"],
    ),
    "threshold without a limit": (
        with_rule(
            'id = "low"\nkind = "threshold"\ntype = "power_outage"\n'
            'event = ["meter.reading"]\nvalue = ["instant.voltage"]\n'
        ),
        ["rules[4]: needs exactly one of 'below' or 'above'"],
    ),
    "duplicate rule id": (
        with_rule('id = "panel"\nkind = "match"\ntype = "power_outage"\nevent = ["io.input"]\n'),
        ['rules[4].id: "panel" is already used by rules[0]'],
    ),
    "fire linkage on one signal": (
        replaced('active_field = "abnormal"\nactions = false', 'active_field = "abnormal"'),
        ["rules[0].actions: true would release gates", "GB 50116 §4.1.6", "all_of"],
    ),
    "all_of naming a missing rule": (
        replaced('signals = ["panel", "detector"]', 'signals = ["panel", "smoke"]'),
        ['rules[2].signals[1]: "smoke" is not another rule'],
    ),
    "suppressed_by naming a match rule": (
        with_rule(
            'id = "offline"\nkind = "match"\ntype = "power_outage"\n'
            'event = ["device.health"]\nsuppressed_by = ["panel"]\n'
        ),
        ['rules[4].suppressed_by[0]: "panel" is not an aggregate rule'],
    ),
    "shift at 25:00": (
        replaced('shifts = ["08:00", "20:00"]', 'shifts = ["08:00", "25:00"]'),
        ['plan.shifts[1]: "25:00" is not a time of day'],
    ),
    "shift with a zone": (
        replaced('shifts = ["08:00", "20:00"]', 'shifts = ["08:00Z", "20:00"]'),
        ['plan.shifts[0]: "08:00Z" is not a time of day (HH:MM'],
    ),
    "duplicate level": (
        replaced(
            'name_en = "Shift leader"\n',
            'name_en = "Shift leader"\n\n[[levels]]\nid = "guard_on_duty"\nname = "保安"\n'
            'name_en = "Guard"\n',
        ),
        ['levels[2].id: "guard_on_duty" is already used by levels[0]'],
    ),
    "seconds as text (one line, not one per number type)": (
        replaced('priority = "P1"\nactions', 'priority = "P1"\nack_within_s = "60"\nactions'),
        ['types.fire_alarm.ack_within_s: "60" is not a number'],
    ),
    "a float in when (one line)": (
        replaced('when = { meaning = "fire_panel_alarm" }', "when = { input = 1.5 }"),
        ["rules[0].when.input: 1.5 is not a text, true/false or a whole number"],
    ),
    "bad TOML": (
        MINIMAL + "\n[[rules]\n",
        ["not valid TOML", "line"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plan_names_file_key_and_value(tmp_path: Path, case: str) -> None:
    text, expected = BROKEN[case]
    path = write(tmp_path, text)
    problem = the_problem(path)
    assert problem.startswith(f"{path}: "), problem
    for part in expected:
        assert part in problem, f"{part!r} not in {problem!r}"


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    text = replaced('priority = "P1"', 'priority = "P9"\ncolour = "red"')
    with pytest.raises(ConfigError) as info:
        load_plan(write(tmp_path, text))
    assert len(info.value.problems) == 2, info.value.problems


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    assert the_problem(path) == f"{path}: no such file (the contingency plan)"


def test_a_file_not_in_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_bytes(MINIMAL.encode("gb18030"))
    assert the_problem(path) == f"{path}: is not UTF-8 text; save it as UTF-8"


# ---- the reference keeps up with the schema ---------------------------------------


def _models(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = {model}
    for info in model.model_fields.values():
        stack = [info.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found |= _models(annotation)
            else:
                stack += typing.get_args(annotation)
    return found


def test_docs_describe_every_key_of_the_plan() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))
    keys = {key for model in _models(Plan) for key in model.model_fields}
    keys -= {"plan", "levels", "types", "rules"}  # the tables, each with its own heading
    assert keys - documented == set(), "keys not in docs/alarms.md"
    assert documented - keys == set(), "docs/alarms.md lists keys the plan does not have"
    for heading in ("## `[plan]`", "## `[[levels]]`", "## `[types.NAME]`", "## `[[rules]]`"):
        assert heading in text, heading
    for kind in ("match", "threshold", "absence", "aggregate", "all_of"):
        assert f'### `kind = "{kind}"`' in text, kind
