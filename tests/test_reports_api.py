"""Guard-room reports in the running service (``gateway run``) with the reference
central receiver: the report reaches central as an incident with its priority
and revisions and shows the ticket number; central's resolution comes back
into the timeline; roles (a guard never sees the resident's phone, a
supervisor does and the view is audited; only a supervisor closes); bad
input is refused with a reason; statistics and the CSV."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from gateway.sync.receiver import CentralReceiver
from tests.harness.site import Site, running, wait_for, write_site

SITE = "test-site"
TOKEN = "central-token-for-test-site"

LEAK = {
    "category": "repair",
    "subcategory": "water",
    "urgency": "P2",
    "description": "厨房水管漏水",
    "building": "3栋",
    "unit": "2单元501",
    "channel": "phone",
    "contact_name": "张三",
    "contact_phone": "13812345678",
}


def api(site: Site, role: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method,
        f"{site.url}/api/v1/reports{path}",
        json=body,
        headers=site.headers(role),
        timeout=10,
    )


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralReceiver]:
    with CentralReceiver(tmp_path / "central.db", sites={SITE: TOKEN}) as receiver:
        yield receiver


@pytest.fixture
def site(tmp_path: Path, central: CentralReceiver) -> Iterator[Site]:
    site = write_site(
        tmp_path / "site",
        extra=(
            f'\n[sync]\nbase_url = "{central.base_url}"\ntoken = "{TOKEN}"\n'
            "backoff_initial_s = 0.1\nbackoff_max_s = 1.0\npull_interval_s = 0.5\n"
            "\n[reports]\nwatch_interval_s = 0.2\n"
        ),
    )
    with running(site):
        yield site


def test_a_report_reaches_central_and_centrals_resolution_comes_back(
    site: Site, central: CentralReceiver
) -> None:
    taken = api(site, "guard", "POST", "", LEAK)
    assert taken.status_code == 201, taken.text
    report = taken.json()
    rid = report["report_id"]
    assert report["owner"] == "guard1" and report["state"] == "open"
    assert report["urgency_name"] == "急" and 890 < report["seconds_left"] <= 900
    [first] = wait_for(central.incidents, 10, "incident at central")
    assert first["incident_id"] == rid and first["priority"] == "P2"
    assert first["type"] == "report_repair" and first["state"] == "open"
    assert first["location"] == "3栋 2单元501"
    assert "13812345678" not in str(first) and "张三" not in str(first)
    shown = wait_for(
        lambda: api(site, "guard", "GET", f"/{rid}").json()["ticket_no"], 10, "ticket shown"
    )
    assert shown == first["ticket_no"]

    assert api(site, "guard", "POST", f"/{rid}/dispatch", {"to": "工程部 王师傅"}).is_success
    latest = wait_for(
        lambda: [i for i in central.incidents() if i["state"] == "acknowledged"], 10, "rev 2"
    )
    assert latest[0]["revision"] > first["revision"]
    assert latest[0]["handler"] == "工程部 王师傅"
    assert [t["what"] for t in latest[0]["timeline"]] == ["reported", "dispatched → 工程部 王师傅"]

    central.add_ticket_update(incident_id=rid, state="resolved", note="已更换阀门")

    def resolved() -> dict[str, Any] | None:
        body = dict(api(site, "guard", "GET", f"/{rid}").json())
        return body if body["state"] == "resolved" else None

    body = wait_for(resolved, 10, "central's resolution in the report")
    assert [(s["what"], s["by"], s["note"]) for s in body["timeline"] if s["by"] == "central"] == [
        ("central_resolved", "central", "已更换阀门")
    ]
    assert api(site, "supervisor", "POST", f"/{rid}/close", {"note": "核实"}).is_success


def test_only_a_supervisor_sees_the_residents_phone_and_the_view_is_audited(
    site: Site,
) -> None:
    rid = api(site, "guard", "POST", "", LEAK).json()["report_id"]
    seen = api(site, "guard", "GET", f"/{rid}").json()
    assert seen["reporter_masked"] == "张* 138****5678"
    listed = api(site, "guard", "GET", "").text
    assert "13812345678" not in listed and "张三" not in listed
    assert api(site, "guard", "GET", f"/{rid}/contact").status_code == 403
    assert api(site, "central", "GET", "").status_code == 403
    contact = api(site, "supervisor", "GET", f"/{rid}/contact")
    assert contact.json() == {"report_id": rid, "name": "张三", "phone": "13812345678"}
    audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("admin")).json()["audit"]
    views = [a for a in audit if a["action"] == "reports.contact_view"]
    assert [(a["who"], a["target"]) for a in views] == [("supervisor1", rid)]
    assert "13812345678" not in str(audit)


def test_the_loop_is_enforced_with_readable_refusals(site: Site) -> None:
    noise = {
        "category": "complaint",
        "subcategory": "noise",
        "urgency": "P3",
        "description": "楼上装修噪音",
        "building": "5栋",
    }
    rid = api(site, "guard", "POST", "", noise).json()["report_id"]
    assert api(site, "guard", "POST", f"/{rid}/resolve", {"note": "已劝停"}).is_success
    assert api(site, "guard", "POST", f"/{rid}/close", {}).status_code == 403
    refused = api(site, "supervisor", "POST", f"/{rid}/close", {})
    assert refused.status_code == 409 and "回访" in refused.json()["detail"]
    assert api(site, "guard", "POST", f"/{rid}/follow-up", {"result": "satisfied"}).is_success
    assert api(site, "supervisor", "POST", f"/{rid}/close", {}).json()["state"] == "closed"
    handed = api(site, "guard", "POST", f"/{rid}/handover", {"to": "guard1"})
    assert handed.status_code == 409
    assert api(site, "guard", "POST", "/R-19990101-001/resolve", {}).status_code == 404


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"category": "plumbing"}, "category 'plumbing' is not one of this site's"),
        ({"subcategory": "noise"}, "sub-category 'noise' is not one of 'repair'"),
        ({"building": None}, "say where"),
        ({"agreed_time": "2030-01-01T09:00:00+08:00"}, "agree times for P3"),
        ({"urgency": "P3", "agreed_time": "2099-01-01T09:00"}, "within 31 days"),
        ({"urgency": "P3", "agreed_time": "0001-01-01T00:00:00+08:00"}, "out of range"),
        ({"urgency": "P0"}, "urgency"),
        ({"contact_phone": "call me"}, "contact_phone"),
        ({"description": ""}, "description"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_reports_are_refused_with_the_reason(
    site: Site, change: dict[str, Any], why: str
) -> None:
    answer = api(site, "guard", "POST", "", {**LEAK, **change})
    assert answer.status_code == 422 and why in answer.text, answer.text


def test_statistics_and_the_csv(site: Site) -> None:
    rid = api(site, "guard", "POST", "", LEAK).json()["report_id"]
    assert api(site, "guard", "POST", f"/{rid}/on-scene", {}).is_success
    month = rid.split("-")[1][:4] + "-" + rid.split("-")[1][4:6]
    stats = api(site, "guard", "GET", f"/stats?month={month}").json()
    assert stats["reports"] == 1 and stats["by_category"] == {"repair": 1}
    assert stats["by_urgency"][1]["on_time_pct"] == 100.0
    csv = api(site, "guard", "GET", f"/export.csv?month={month}")
    assert csv.content.startswith("\ufeff".encode()) and rid in csv.text
    assert "13812345678" not in csv.text
    summary = api(site, "guard", "GET", f"/export.csv?month={month}&table=summary").text
    assert "按时率" in summary
    assert api(site, "guard", "GET", "/stats?month=2026-13").status_code == 422


def test_agreed_time_is_site_time_and_the_csv_is_safe_for_excel(site: Site) -> None:
    """A time typed without an offset is the site's (Asia/Shanghai here), whatever
    the guard PC's zone; the register shows site time; a place typed like a formula
    stays text in Excel; the contact view is never cached."""
    tomorrow = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(days=1)).date()
    later = {
        **LEAK,
        "urgency": "P3",
        "building": None,
        "unit": None,
        "area": '=HYPERLINK("http://x")',
        "agreed_time": f"{tomorrow.isoformat()}T09:30",
    }
    taken = api(site, "guard", "POST", "", later)
    assert taken.status_code == 201, taken.text
    report = taken.json()
    assert report["respond_by"].startswith(f"{tomorrow.isoformat()}T01:30:00")
    day = report["report_id"].split("-")[1]  # the site's day
    month = f"{day[:4]}-{day[4:6]}"
    text = api(site, "guard", "GET", f"/export.csv?month={month}").text
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text
    row = next(line for line in text.splitlines() if report["report_id"] in line)
    assert f"{tomorrow.isoformat()} 09:30" in row
    contact = api(site, "supervisor", "GET", f"/{report['report_id']}/contact")
    assert contact.headers["cache-control"] == "no-store"
