"""Events: stable, time-ordered ids and the journal row."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.events import Event, check_event_id, check_kind, new_event_id


def test_ids_are_unique_and_sort_in_creation_order() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_kind_must_be_dotted_lower_case() -> None:
    assert check_kind("gate.access") == "gate.access"
    for bad in ("gate", "Gate.Access", "gate..access", "gate.access ", "", "1gate.x"):
        with pytest.raises(ValueError, match="dotted lower-case"):
            check_kind(bad)


def test_caller_ids_are_printable_ascii() -> None:
    assert check_event_id("B01-0101-E:import_kwh:2026-11-23T08:00:00+08:00")
    for bad in ("", "a b", "x" * 201, "表"):
        with pytest.raises(ValueError):
            check_event_id(bad)


def test_row_stores_receive_time_in_utc_and_keeps_device_offset() -> None:
    shanghai = timezone(timedelta(hours=8))
    event = Event(
        "meter.reading",
        "B01-0101-E",
        {"value": 1.5, "unit": "kWh", "备注": "中文"},
        device_time=datetime(2026, 11, 23, 8, 0, tzinfo=shanghai),
        received_at=datetime(2026, 11, 23, 8, 0, 1, tzinfo=shanghai),
        id="fixed-id",
    )
    row = event.as_row()
    assert row[0] == "fixed-id"
    assert row[3] == "2026-11-23T08:00:00.000+08:00"
    assert row[4] == "2026-11-23T00:00:01.000+00:00"
    assert '"备注":"中文"' in row[5]


def test_naive_device_time_is_refused() -> None:
    event = Event("meter.reading", "m", device_time=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        event.as_row()


def test_events_are_frozen() -> None:
    event = Event("gate.access", "g", received_at=datetime.now(UTC))
    with pytest.raises(AttributeError):
        event.kind = "x"  # type: ignore[misc]
