"""The alarm engine on its own: every rule kind, the ISA-18.2 lifecycle,
escalation and respond-by with an injected clock, planned outages, flood and
chatter — driven with the shipped contingency plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.alarms.engine import AlarmEngine, AlarmRefused
from gateway.alarms.plan import load_plan
from gateway.alarms.rules import Device, Directory

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
PLAN = load_plan()


def directory() -> Directory:
    devices = [Device("io-1", "io"), Device("io-2", "io"), Device("gate-1", "door", "东门")]
    devices += [Device("bar-1", "barrier", "车库入口", lot="garage")]
    devices += [Device("B03-main", "meter", None, "electricity", "B03", "main")]
    devices += [
        Device(f"B03-{n:02d}", "meter", None, "electricity", "B03", "billed") for n in range(10)
    ]
    devices += [
        Device(f"B04-{n:02d}", "meter", None, "electricity", "B04", "billed") for n in range(10)
    ]
    return Directory(devices)


def engine(**kw: Any) -> AlarmEngine:
    return AlarmEngine(PLAN, directory(), site_name="颐园世家", started=T0, **kw)


def contact(
    meaning: str, abnormal: bool, number: int = 1, where: str = "消防控制室"
) -> dict[str, Any]:
    return {"input": number, "meaning": meaning, "where": where, "abnormal": abnormal}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_match_rule_raises_and_clears_a_contact_and_lifecycle_a_to_d() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("elevator_alarm", True, 3, "B01-L1"), at(0))
    alarm = (
        e.alarms["elevator-alarm-relay:io-1/3"]
        if "elevator-alarm-relay:io-1/3" in e.alarms
        else None
    )
    assert alarm is not None, sorted(e.alarms)
    assert alarm.state == "unacknowledged" and alarm.priority == "P1"
    assert alarm.location == "B01-L1"
    fx = e.take()
    assert [ev.kind for ev in fx.events] == ["alarm.raised"]
    assert next(iter(fx.incidents.values()))["state"] == "open"
    # B → D: clears before anyone acknowledged; still shown
    e.on_event("io.input", "io-1", contact("elevator_alarm", False, 3, "B01-L1"), at(20))
    assert alarm.state == "rtn_unacknowledged"
    # D → A on acknowledge
    e.acknowledge(alarm.alarm_id, "guard-07", at(30))
    assert alarm.state == "normal"
    assert list(e.take().incidents.values())[-1]["state"] == "closed"
    with pytest.raises(AlarmRefused):
        e.acknowledge(alarm.alarm_id, "guard-07", at(31))
    # a new activation is a new occurrence (a new incident)
    first = alarm.occurrence
    e.on_event("io.input", "io-1", contact("elevator_alarm", True, 3, "B01-L1"), at(100))
    assert alarm.occurrence != first and alarm.state == "unacknowledged"
    # B → C → A
    e.acknowledge(alarm.alarm_id, "guard-07", at(110))
    assert alarm.state == "acknowledged"
    e.on_event("io.input", "io-1", contact("elevator_alarm", False, 3, "B01-L1"), at(120))
    assert alarm.state == "normal"


def test_momentary_event_is_returned_to_normal_unacknowledged() -> None:
    e = engine()
    e.on_event("door.forced", "gate-1", {"door": 1}, at(0))
    alarm = e.alarms["door-forced:gate-1"]
    assert alarm.state == "rtn_unacknowledged" and alarm.location == "东门"


def test_escalation_and_respond_by_follow_the_plan_with_an_injected_clock() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("elevator_alarm", True, 3, "B01-L1"), at(0))
    alarm = e.alarms["elevator-alarm-relay:io-1/3"]
    kind = PLAN.types["elevator_entrapment"]
    assert alarm.respond_by == (T0 + timedelta(seconds=float(kind.ack_within_s or 0))).isoformat(
        timespec="milliseconds"
    )
    first = kind.escalation[0]
    e.take()
    e.tick(at(float(first.after_s) - 1))
    assert alarm.escalated == 0
    e.tick(at(float(first.after_s)))
    assert alarm.escalated == 1
    fx = e.take()
    whats = [ev.kind for ev in fx.events]
    assert "alarm.escalated" in whats and "alarm.overdue" in whats
    timeline = list(fx.incidents.values())[-1]["timeline"]
    assert [t["what"] for t in timeline][-2:] == ["escalated", "overdue"]
    # acknowledged alarms stop climbing the ladder
    e.acknowledge(alarm.alarm_id, "guard-07", at(float(first.after_s) + 1))
    e.tick(at(10_000))
    assert alarm.escalated == 1


def test_steps_are_ticked_with_who_and_when() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("elevator_alarm", True, 3, "B01-L1"), at(0))
    alarm = e.alarms["elevator-alarm-relay:io-1/3"]
    e.tick_step(alarm.alarm_id, 0, "guard-07", at(5))
    view = e.view(alarm, at(6))
    assert view["steps"][0]["by"] == "guard-07" and view["steps"][1]["done_at"] is None
    with pytest.raises(AlarmRefused):
        e.tick_step(alarm.alarm_id, 0, "guard-07", at(7))
    with pytest.raises(AlarmRefused):
        e.tick_step(alarm.alarm_id, 99, "guard-07", at(7))


def test_shelve_needs_reason_is_bounded_and_is_re_evaluated_on_expiry() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("sump_high", True, 5, "地库集水坑"), at(0))
    alarm = e.alarms["sump-high-relay:io-1/5"]
    with pytest.raises(AlarmRefused):
        e.shelve(alarm.alarm_id, "sup-02", "  ", 600, at(1))
    with pytest.raises(AlarmRefused):
        e.shelve(alarm.alarm_id, "sup-02", "pump repair", 25 * 3600, at(1))
    e.shelve(alarm.alarm_id, "sup-02", "pump repair", 600, at(1))
    assert alarm.state == "shelved"
    # still evaluated while shelved: it clears and comes back underneath
    e.on_event("io.input", "io-1", contact("sump_high", False, 5), at(100))
    e.on_event("io.input", "io-1", contact("sump_high", True, 5), at(200))
    assert alarm.state == "shelved" and alarm.active
    e.take()
    e.tick(at(602))
    assert alarm.state == "unacknowledged"
    assert "alarm.unshelved" in [ev.kind for ev in e.take().events]


def test_out_of_service_hides_and_blocks_actions() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("sump_high", True, 5), at(0))
    alarm = e.alarms["sump-high-relay:io-1/5"]
    e.remove_from_service(alarm.alarm_id, "sup-02", "sensor replaced", at(1))
    assert alarm.state == "out_of_service"
    e.return_to_service(alarm.alarm_id, "sup-02", at(2))
    assert alarm.state == "unacknowledged"


def test_threshold_with_on_delay_deadband_and_off_delay() -> None:
    e = engine()
    reading = lambda volts: {"instant": {"voltage": volts}, "readings": []}  # noqa: E731
    e.on_event("meter.reading", "B03-main", reading(170), at(0))
    e.on_event("meter.reading", "B03-main", reading(170), at(5))
    assert "main-supply-low:B03-main" not in e.alarms  # on-delay 10 s not over
    e.on_event("meter.reading", "B03-main", reading(172), at(10))
    alarm = e.alarms["main-supply-low:B03-main"]
    assert alarm.active and alarm.building == "B03"
    e.on_event("meter.reading", "B03-main", reading(185), at(20))  # inside the deadband
    e.tick(at(60))
    assert alarm.active
    e.on_event("meter.reading", "B03-main", reading(225), at(70))
    e.tick(at(99))
    assert alarm.active  # off-delay 30 s
    e.tick(at(100))
    assert not alarm.active


def test_absence_rule_raises_when_a_device_goes_silent() -> None:
    e = engine()
    e.tick(at(1799))
    assert "main-meter-silent:B03-main" not in e.alarms
    e.tick(at(1800))
    assert e.alarms["main-meter-silent:B03-main"].active
    e.on_event("meter.reading", "B03-main", {"instant": {"voltage": 230}}, at(1900))
    assert not e.alarms["main-meter-silent:B03-main"].active


def test_aggregate_one_building_outage_not_one_alarm_per_meter() -> None:
    e = engine()
    offline = {"previous": "online", "state": "offline", "reason": "timeout"}
    for n in range(4):
        e.on_event("device.health", f"B03-{n:02d}", offline, at(n))
    e.tick(at(70))  # the first four meters' own alarms pass their 60 s on-delay
    shown = [a for a in e.alarms.values() if a.annunciated]
    assert len(shown) == 4 and "building-power:B03" not in e.alarms
    for n in range(4, 10):
        e.on_event("device.health", f"B03-{n:02d}", offline, at(70 + n))
    e.tick(at(200))
    building = e.alarms["building-power:B03"]
    assert building.active and building.priority == "P1"
    shown = [a for a in e.alarms.values() if a.annunciated]
    assert [a.alarm_id for a in shown] == ["building-power:B03"]
    members = [a for a in e.alarms.values() if a.rule == "device-offline"]
    assert len(members) == 10 and all(a.state == "suppressed" for a in members)
    assert "B04" not in {a.building for a in e.alarms.values()}


def test_aggregate_counts_zero_voltage_readings() -> None:
    e = engine()
    for n in range(5):
        e.on_event("meter.reading", f"B04-{n:02d}", {"instant": {"voltage": 0.0}}, at(n))
    assert e.alarms["building-power:B04"].active


def test_planned_outage_suppresses_in_its_window_and_overrun_becomes_unplanned() -> None:
    e = engine()
    e.on_event(
        "central.outage_notice",
        None,
        {
            "notice_id": "N-1",
            "utility": "electricity",
            "scope": ["B04"],
            "starts_at": at(0).isoformat(),
            "ends_at": at(3600).isoformat(),
            "reason": "transformer work",
        },
        at(0),
    )
    for n in range(6):
        e.on_event("meter.reading", f"B04-{n:02d}", {"instant": {"voltage": 0.0}}, at(10))
    alarm = e.alarms["building-power:B04"]
    assert alarm.active and alarm.state == "suppressed" and alarm.suppressed == "planned:N-1"
    fx = e.take()
    assert not fx.incidents  # planned: no emergency ticket
    e.tick(at(3599))
    assert alarm.state == "suppressed"
    e.tick(at(3600))
    assert alarm.state == "unacknowledged"
    assert alarm.raised_at == at(3600).isoformat(timespec="milliseconds")
    fx = e.take()
    assert "alarm.unsuppressed" in [ev.kind for ev in fx.events]
    assert next(iter(fx.incidents.values()))["state"] == "open"


def test_fire_needs_two_independent_signals_before_linkage() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("fire_panel_alarm", True, 1), at(0))
    fx = e.take()
    assert not fx.actions
    assert e.alarms["fire-panel-relay:io-1/1"].priority == "P1"
    e.on_event("detector.alarm", "smoke-7", {"zone": "B03-1F"}, at(30))
    confirmed = e.alarms["fire-confirmed:site"]
    assert confirmed.active
    fx = e.take()
    assert sorted(a.action for a in fx.actions) == ["raise_barriers", "release_gates"]
    # a barrier fault during a fire counts as P1
    e.on_event("barrier.fault", "bar-1", {"code": "E3"}, at(40))
    assert e.alarms["barrier-fault:bar-1"].priority == "P1"


def test_flood_mode_enters_above_ten_and_leaves_below_five_and_p1_is_first_out() -> None:
    e = engine()
    for n in range(11):
        e.on_event("door.forced", f"door-{n}", {"door": 1}, at(n))
    assert e.flood
    fx = e.take()
    assert [ev.payload["state"] for ev in fx.events if ev.kind == "alarm.flood"] == ["started"]
    e.tick(at(n + 601))
    assert not e.flood


def test_chattering_is_flagged_at_three_activations_in_a_minute() -> None:
    e = engine()
    for n in range(3):
        e.on_event("io.input", "io-2", contact("perimeter_beam", True, 2, "北围墙"), at(n * 10))
        e.on_event(
            "io.input", "io-2", contact("perimeter_beam", False, 2, "北围墙"), at(n * 10 + 1)
        )
    alarm = e.alarms["perimeter-beam-relay:io-2/2"]
    assert alarm.chattering
    assert "alarm.chattering" in [ev.kind for ev in e.take().events]


def test_memory_round_trip_keeps_on_delays_and_members() -> None:
    e = engine()
    e.on_event("meter.reading", "B03-main", {"instant": {"voltage": 100}}, at(0))
    e.on_event("device.health", "B03-00", {"state": "offline"}, at(0))
    again = engine(alarms=e.alarms.values())
    again.restore(e.memory())
    again.on_event("meter.reading", "B03-main", {"instant": {"voltage": 100}}, at(10))
    assert again.alarms["main-supply-low:B03-main"].active


def test_on_scene_commitment_is_recorded_or_flagged_missed() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("elevator_alarm", True, 3, "B01-L1"), at(0))
    alarm = e.alarms["elevator-alarm-relay:io-1/3"]
    within = float(PLAN.types["elevator_entrapment"].on_scene_within_s or 0)
    assert within == 1800  # lift maintenance on site within 30 minutes
    e.acknowledge(alarm.alarm_id, "guard-07", at(30))
    e.assign(alarm.alarm_id, "guard-07", at(40), handler="维保-张工", supervisor="sup-02")
    e.take()
    e.tick(at(within - 1))
    assert not alarm.on_scene_missed
    e.tick(at(within))
    assert alarm.on_scene_missed
    fx = e.take()
    mine = [ev.kind for ev in fx.events if ev.payload["alarm_id"] == alarm.alarm_id]
    assert mine == ["alarm.on_scene_overdue"]
    incident = fx.incidents[alarm.occurrence or ""]
    assert incident["handler"] == "维保-张工" and incident["supervisor"] == "sup-02"
    e.on_scene(alarm.alarm_id, "guard-07", at(within + 300))
    assert e.view(alarm, at(within + 301))["on_scene_at"] is not None
    with pytest.raises(AlarmRefused):
        e.on_scene(alarm.alarm_id, "guard-07", at(within + 302))


def test_only_readings_of_watched_meters_are_read() -> None:
    e = engine()
    assert e.wants("meter.reading", "B03-main") and e.wants("meter.reading", "B04-03")
    assert not e.wants("meter.reading", "some-test-meter")
    assert e.wants("door.forced", "any-door") and e.wants("central.outage_notice", None)
    assert not e.wants("access.granted", "gate-1")


def test_a_clearing_event_clears_and_a_cleared_detector_no_longer_counts_for_fire() -> None:
    e = engine()
    e.on_event("door.held_open", "gate-1", {"door": 1}, at(0))
    held = e.alarms["door-held-open:gate-1"]
    assert held.active and held.state == "unacknowledged"
    e.on_event("door.closed", "gate-1", {"door": 1}, at(30))
    assert not held.active and held.state == "rtn_unacknowledged"
    e.on_event("detector.alarm", "smoke-1", {}, at(100))
    e.on_event("detector.normal", "smoke-1", {}, at(110))
    assert not e.alarms["fire-detector-mqtt:smoke-1"].active
    e.take()
    # 10 minutes later one relay alone is one signal: no linkage
    e.on_event("io.input", "io-1", contact("fire_panel_alarm", True, 1), at(700))
    assert "fire-confirmed:site" not in e.alarms or not e.alarms["fire-confirmed:site"].active
    assert not e.take().actions


def test_an_outage_over_inside_its_planned_window_needs_nothing_from_the_guard() -> None:
    e = engine()
    notice = {
        "notice_id": "N-2",
        "utility": "electricity",
        "scope": ["B04"],
        "starts_at": at(0).isoformat(),
        "ends_at": at(3600).isoformat(),
    }
    e.on_event("central.outage_notice", None, notice, at(0))
    for n in range(6):
        e.on_event("meter.reading", f"B04-{n:02d}", {"instant": {"voltage": 0.0}}, at(10))
    for n in range(6):
        e.on_event("meter.reading", f"B04-{n:02d}", {"instant": {"voltage": 229.0}}, at(600))
    e.tick(at(700))  # past the aggregate's off-delay
    alarm = e.alarms["building-power:B04"]
    assert alarm.state == "normal"
    e.tick(at(4000))
    assert alarm.state == "normal"
    assert not [i for i in e.take().incidents.values() if i["type"] == "power_outage"]


def test_a_re_raise_before_acknowledgement_sends_a_new_revision() -> None:
    e = engine()
    e.on_event("io.input", "io-1", contact("sump_high", True, 5), at(0))
    e.on_event("io.input", "io-1", contact("sump_high", False, 5), at(10))
    first = e.take().incidents
    e.on_event("io.input", "io-1", contact("sump_high", True, 5), at(20))
    again = e.take().incidents
    [(occurrence, body)] = again.items()
    assert occurrence in first and body["state"] == "open"
    assert body["revision"] > first[occurrence]["revision"]


def test_the_gateways_own_downtime_is_not_a_devices_silence() -> None:
    e = engine()
    e.on_event("meter.reading", "B03-main", {"instant": {"voltage": 230}}, at(0))
    memory = e.memory()
    later = AlarmEngine(PLAN, directory(), site_name="x", started=at(7200))  # back after 2 h
    later.restore(memory)
    later.tick(at(7201))
    assert "main-meter-silent:B03-main" not in later.alarms
    later.tick(at(7200 + 1800))
    assert later.alarms["main-meter-silent:B03-main"].active
