"""The authorization matrix: every endpoint of the running gateway × every role.

``MATRIX`` is the reviewed table of which permission each endpoint needs; the
roles holding a permission are ``gateway.auth.PERMISSIONS`` (documented in
docs/config.md). The test fails when an endpoint appears in the OpenAPI spec
without a row here (a new endpoint must be placed in the matrix on purpose), and
asks each endpoint as each role and without a token: a role without the
permission gets 403, without a token 401, and a role with it gets past the check
(whatever the endpoint then answers to a dummy request). The pages, which take a
session instead of a token, send a visitor without one to the login form; card
numbers and plates reach only supervisors and admins in full.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from gateway.auth import PERMISSIONS
from tests.harness.site import ROLES, Site, running, write_site

PUBLIC = "public"
MATRIX: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): "health.detail",
    ("GET", "/api/v1/events"): "events.read",
    ("POST", "/api/v1/events"): "events.submit",
    ("GET", "/api/v1/audit"): "audit.read",
    ("GET", "/api/v1/devices"): "devices.read",
    ("GET", "/api/v1/meters"): "meters.read",
    ("GET", "/api/v1/meters/{meter}/readings"): "meters.read",
    ("GET", "/api/v1/billing/owed"): "meters.read",
    ("GET", "/api/v1/billing/{period}/period-close.csv"): "billing.export",
    ("POST", "/api/v1/meters/{meter}/manual-readings"): "readings.edit",
    ("POST", "/api/v1/meters/{meter}/replacements"): "readings.edit",
    ("POST", "/api/v1/io/{device}/outputs/{output}"): "outputs.switch",
    ("GET", "/api/v1/sync"): "sync.read",
    ("GET", "/api/v1/sync/dead-letters"): "sync.read",
    ("POST", "/api/v1/sync/dead-letters/{letter_id}/requeue"): "sync.requeue",
    ("GET", "/api/v1/central/tickets"): "sync.read",
    ("GET", "/api/v1/central/outage-notices"): "sync.read",
    ("GET", "/api/v1/parking"): "devices.read",
    ("POST", "/api/v1/parking/{lot}/recount"): "parking.recount",
    ("POST", "/api/v1/access/{device}/commands"): "access.command",
    ("GET", "/api/v1/alarms"): "alarms.read",
    ("GET", "/api/v1/alarms/kpis"): "alarms.read",
    ("GET", "/api/v1/alarms/per-hour"): "alarms.read",
    ("GET", "/api/v1/alarms/stream"): "alarms.read",
    ("POST", "/api/v1/alarms/planned-outages"): "outages.plan",
    ("GET", "/api/v1/alarms/{alarm_id}"): "alarms.read",
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): "alarms.acknowledge",
    ("POST", "/api/v1/alarms/{alarm_id}/notes"): "alarms.acknowledge",
    ("POST", "/api/v1/alarms/{alarm_id}/steps/{number}"): "alarms.acknowledge",
    ("POST", "/api/v1/alarms/{alarm_id}/on-scene"): "alarms.acknowledge",
    ("POST", "/api/v1/alarms/{alarm_id}/assign"): "alarms.acknowledge",
    ("POST", "/api/v1/alarms/{alarm_id}/shelve"): "alarms.shelve",
    ("POST", "/api/v1/alarms/{alarm_id}/unshelve"): "alarms.shelve",
    ("POST", "/api/v1/alarms/{alarm_id}/out-of-service"): "alarms.service",
    ("POST", "/api/v1/alarms/{alarm_id}/return-to-service"): "alarms.service",
    ("GET", "/api/v1/screen/status"): "devices.read",
    ("GET", "/api/v1/screen/charts"): "devices.read",
    ("GET", "/api/v1/access/feed"): "devices.read",
    ("POST", "/api/v1/patrol/scans"): "patrol.scan",
    ("POST", "/api/v1/patrol/panic"): "patrol.scan",
    ("POST", "/api/v1/patrol/reports"): "patrol.scan",
    ("GET", "/api/v1/patrol/photos/{name}"): "devices.read",
    ("GET", "/api/v1/patrol/status"): "devices.read",
    ("GET", "/api/v1/patrol/report"): "patrol.report",
    ("GET", "/api/v1/patrol/checkpoints"): "patrol.manage",
    ("GET", "/api/v1/handovers"): "handover.read",
    ("POST", "/api/v1/handovers"): "handover.write",
    ("POST", "/api/v1/handovers/{handover_id}/sign"): "handover.write",
    ("GET", "/api/v1/handovers/{handover_id}"): "handover.read",
    ("GET", "/api/v1/reports"): "reports.read",
    ("POST", "/api/v1/reports"): "reports.write",
    ("GET", "/api/v1/reports/categories"): "reports.read",
    ("GET", "/api/v1/reports/stats"): "reports.read",
    ("GET", "/api/v1/reports/export.csv"): "reports.read",
    ("GET", "/api/v1/reports/{report_id}"): "reports.read",
    ("GET", "/api/v1/reports/{report_id}/contact"): "reports.contact",
    ("POST", "/api/v1/reports/{report_id}/handover"): "reports.write",
    ("POST", "/api/v1/reports/{report_id}/dispatch"): "reports.write",
    ("POST", "/api/v1/reports/{report_id}/on-scene"): "reports.write",
    ("POST", "/api/v1/reports/{report_id}/resolve"): "reports.write",
    ("POST", "/api/v1/reports/{report_id}/follow-up"): "reports.write",
    ("POST", "/api/v1/reports/{report_id}/close"): "reports.close",
    ("POST", "/api/v1/reports/{report_id}/cancel"): "reports.close",
    ("POST", "/api/v1/reports/{report_id}/notes"): "reports.write",
}
# Open by design: the spec, the pages' frame and the login form (the pages check
# their session themselves, below).
OPEN_DOCS = {("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect")}
PARAMS = {"number": "1", "output": "1", "period": "2026-11"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = write_site(tmp_path_factory.mktemp("authz"))
    with running(site):
        yield site


def _url(site: Site, path: str) -> str:
    return site.url + re.sub(r"\{(\w+)\}", lambda m: PARAMS.get(m.group(1), "x"), path)


def _status(client: httpx.Client, method: str, url: str, headers: dict[str, str]) -> int:
    """The status of one request; a stream (SSE) is closed once its status is in."""
    body = {} if method == "POST" else None
    with client.stream(method, url, json=body, headers=headers) as response:
        return response.status_code


def test_every_endpoint_has_a_row_in_the_matrix(site: Site) -> None:
    spec = httpx.get(f"{site.url}/openapi.json").json()
    served = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    assert served - set(MATRIX) == set(), "endpoints without a decision in MATRIX"
    assert set(MATRIX) - served == set(), "MATRIX rows for endpoints that no longer exist"
    assert {p for p in MATRIX.values() if p != PUBLIC} <= set(PERMISSIONS)


@pytest.mark.parametrize(("method", "path"), sorted(MATRIX))
def test_each_role_gets_exactly_what_the_matrix_gives(site: Site, method: str, path: str) -> None:
    permission = MATRIX[(method, path)]
    url = _url(site, path)
    with httpx.Client(timeout=10) as client:
        anonymous = _status(client, method, url, {})
        if permission == PUBLIC:
            assert anonymous not in (401, 403)
            return
        assert anonymous == 401, f"{method} {path} without a token: {anonymous}"
        wrong = _status(client, method, url, {"Authorization": "Bearer not-a-token"})
        assert wrong == 401, f"{method} {path} with an unknown token: {wrong}"
        for role in ROLES:
            status = _status(client, method, url, site.headers(role))
            if role in PERMISSIONS[permission]:
                assert status not in (401, 403), f"{role} refused {method} {path}: {status}"
            else:
                assert status == 403, f"{role} allowed {method} {path}: {status}"


@pytest.mark.parametrize("page", ["/", "/reports", "/patrol", "/p/CP-1?s=x", "/handovers/x"])
def test_pages_send_a_visitor_without_a_session_to_the_login(site: Site, page: str) -> None:
    answer = httpx.get(site.url + page, headers=site.headers("admin"), follow_redirects=False)
    assert answer.status_code == 303, "a bearer token is not a page session"
    assert answer.headers["location"].startswith("/login")


def test_the_docs_are_open_and_nothing_else_is(site: Site) -> None:
    for method, path in OPEN_DOCS:
        assert httpx.request(method, site.url + path).status_code == 200, path


def test_cards_and_plates_are_masked_for_guards_and_central(
    site: Site,
) -> None:
    event = {
        "kind": "vehicle.entry",
        "device": "P-IN-1",
        "payload": {"plate": "皖A12345", "card": "12345678", "raw": {"plate": "皖A12345"}},
    }
    stored = httpx.post(
        f"{site.url}/api/v1/events", json={"events": [event]}, headers=site.headers("admin")
    )
    assert stored.status_code == 200, stored.text
    for role, plate, card in (
        ("guard", "皖A***45", "****5678"),
        ("central", "皖A***45", "****5678"),
        ("supervisor", "皖A12345", "12345678"),
        ("admin", "皖A12345", "12345678"),
    ):
        answer = httpx.get(
            f"{site.url}/api/v1/events?kind=vehicle.entry", headers=site.headers(role)
        ).json()
        [shown] = answer["events"]
        assert (shown["payload"]["plate"], shown["payload"]["card"]) == (plate, card), role
        assert ("raw" in shown["payload"]) is (role in ("supervisor", "admin")), role
        assert answer["masked"] is (role in ("guard", "central"))
        feed = httpx.get(f"{site.url}/api/v1/access/feed", headers=site.headers(role)).json()
        [entry] = [e for e in feed["events"] if e["kind"] == "vehicle.entry"]
        assert entry["payload"]["plate"] == plate and ("raw" in entry["payload"]) is (
            role in ("supervisor", "admin")
        ), role
