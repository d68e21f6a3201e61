"""The HTTP API of a real gateway process: auth and roles, events, audit, metrics."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.site import Site, running, write_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = write_site(tmp_path_factory.mktemp("api"))
    with running(site):
        yield site


@pytest.fixture
def client(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.url, timeout=10) as client:
        yield client


def test_health_needs_no_token_and_shows_parts(client: httpx.Client) -> None:
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["site"] == "test-site"
    assert body["parts"] == {
        "alarms": "running",
        "api": "running",
        "heartbeat": "running",
        "reports": "running",
    }
    assert body["intake"] == "open"


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/events"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/audit"),
    ],
)
def test_every_other_endpoint_needs_a_valid_token(
    client: httpx.Client, method: str, path: str
) -> None:
    assert client.request(method, path).status_code == 401
    wrong = {"Authorization": "Bearer not-a-real-token"}
    response = client.request(method, path, headers=wrong)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "role,method,path,expected",
    [
        ("guard", "GET", "/api/v1/events", 200),
        ("central", "GET", "/api/v1/events", 200),
        ("guard", "POST", "/api/v1/events", 403),
        ("supervisor", "POST", "/api/v1/events", 403),
        ("central", "POST", "/api/v1/events", 403),
        ("guard", "GET", "/api/v1/audit", 403),
        ("supervisor", "GET", "/api/v1/audit", 200),
    ],
)
def test_roles(
    client: httpx.Client, site: Site, role: str, method: str, path: str, expected: int
) -> None:
    body = {"events": [{"kind": "x.y"}]} if method == "POST" else None
    response = client.request(method, path, headers=site.headers(role), json=body)
    assert response.status_code == expected, response.text


def test_submitted_events_are_durable_queryable_and_audited(
    client: httpx.Client, site: Site
) -> None:
    events = [
        {
            "id": f"api-{i}",
            "kind": "gate.access",
            "device": "N-GATE-P1",
            "device_time": "2026-11-23T08:00:00+08:00",
            "payload": {"result": "granted", "i": i},
        }
        for i in range(5)
    ]
    response = client.post("/api/v1/events", json={"events": events}, headers=site.headers("admin"))
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 5, "ids": [f"api-{i}" for i in range(5)]}

    # the answer came after the commit: another connection sees the rows now
    conn = sqlite3.connect(site.journal)
    stored = conn.execute(
        "SELECT id, device_time, payload FROM events WHERE id LIKE 'api-%' ORDER BY seq"
    ).fetchall()
    conn.close()
    assert [row[0] for row in stored] == [f"api-{i}" for i in range(5)]
    assert stored[0][1] == "2026-11-23T08:00:00.000+08:00"

    page = client.get(
        "/api/v1/events",
        params={"device": "N-GATE-P1", "limit": 3},
        headers=site.headers("guard"),
    ).json()
    assert [e["id"] for e in page["events"]] == ["api-4", "api-3", "api-2"]
    assert page["events"][0]["payload"] == {"result": "granted", "i": 4}
    rest = client.get(
        "/api/v1/events",
        params={"device": "N-GATE-P1", "limit": 3, "cursor": page["next"]},
        headers=site.headers("guard"),
    ).json()
    assert [e["id"] for e in rest["events"]] == ["api-1", "api-0"]
    assert rest["next"] is None

    audit = client.get("/api/v1/audit", headers=site.headers("supervisor")).json()["audit"]
    entry = next(a for a in audit if a["detail"].get("first_id") == "api-0")
    assert entry["who"] == "admin1"
    assert entry["role"] == "admin"
    assert entry["action"] == "events.submit"


def test_resubmitting_the_same_ids_stores_them_once(client: httpx.Client, site: Site) -> None:
    batch = {"events": [{"id": "retry-1", "kind": "x.y"}, {"id": "retry-2", "kind": "x.y"}]}
    for _ in range(3):
        assert (
            client.post("/api/v1/events", json=batch, headers=site.headers("admin")).status_code
            == 200
        )
    conn = sqlite3.connect(site.journal)
    count = conn.execute("SELECT count(*) FROM events WHERE id LIKE 'retry-%'").fetchone()[0]
    conn.close()
    assert count == 2


def test_time_range_filter(client: httpx.Client, site: Site) -> None:
    guard = site.headers("guard")
    recent = client.get("/api/v1/events", params={"limit": 1}, headers=guard).json()["events"][0]
    after = client.get(
        "/api/v1/events",
        params={"since": recent["received_at"], "kind": recent["kind"]},
        headers=guard,
    ).json()["events"]
    assert recent["id"] in [e["id"] for e in after]
    before = client.get(
        "/api/v1/events", params={"until": "2000-01-01T00:00:00+08:00"}, headers=guard
    ).json()["events"]
    assert before == []


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"events": [{"kind": "NotDotted"}]}, "dotted lower-case"),
        ({"events": [{"kind": "x.y", "device_time": "2026-11-23T08:00:00"}]}, "timezone"),
        ({"events": [{"kind": "x.y", "id": "has space"}]}, "printable ASCII"),
        ({"events": [{"kind": "x.y", "colour": "red"}]}, "Extra inputs"),
        ({"events": []}, "at least 1"),
        ({"events": [{"kind": "x.y"}] * 1001}, "at most 1000"),
        ({"events": [{"kind": "x.y", "payload": [1, 2]}]}, "valid dictionary"),
    ],
)
def test_bad_intake_is_rejected_with_a_reason(
    client: httpx.Client, site: Site, body: object, needle: str
) -> None:
    response = client.post("/api/v1/events", json=body, headers=site.headers("admin"))
    assert response.status_code == 422
    assert needle in response.text


def test_malformed_json_and_oversized_bodies(client: httpx.Client, site: Site) -> None:
    admin = {**site.headers("admin"), "Content-Type": "application/json"}
    assert client.post("/api/v1/events", content=b"{not json", headers=admin).status_code == 422
    huge = b'{"events": [{"kind": "x.y", "payload": {"a": "' + b"x" * 5_000_000 + b'"}}]}'
    assert client.post("/api/v1/events", content=huge, headers=admin).status_code == 413
    assert client.get("/healthz").status_code == 200  # still serving


def test_bad_query_parameters(client: httpx.Client, site: Site) -> None:
    guard = site.headers("guard")
    for params in (
        {"limit": 0},
        {"limit": 5000},
        {"since": "yesterday"},
        {"order": "up"},
        {"since": "2026-11-23T08:00:00"},
    ):
        assert client.get("/api/v1/events", params=params, headers=guard).status_code == 422


def test_metrics_in_prometheus_format(client: httpx.Client, site: Site) -> None:
    client.post("/api/v1/events", json={"events": [{"kind": "x.y"}]}, headers=site.headers("admin"))
    response = client.get("/metrics", headers=site.headers("guard"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "gateway_events_ingested_total",
        "gateway_journal_queue_depth",
        "gateway_journal_commit_seconds_bucket",
        'gateway_part_state{part="api",state="running"} 1.0',
        'gateway_part_restarts_total{part="heartbeat"} 0.0',
    ):
        assert name in text
    ingested = next(
        line for line in text.splitlines() if line.startswith("gateway_events_ingested_total")
    )
    assert float(ingested.split()[-1]) >= 1


def test_openapi_is_served(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/metrics", "/api/v1/events", "/api/v1/audit"} <= set(spec["paths"])


def test_heartbeats_reach_the_journal(site: Site) -> None:
    conn = sqlite3.connect(site.journal)
    kinds = {row[0] for row in conn.execute("SELECT DISTINCT kind FROM events")}
    conn.close()
    assert "gateway.started" in kinds


def test_no_token_appears_in_the_journal_or_logs(site: Site) -> None:
    text = Path(site.journal).read_bytes()
    for token in site.tokens.values():
        assert token.encode() not in text


def test_nan_in_a_body_is_a_422_not_a_crash(client: httpx.Client, site: Site) -> None:
    admin = {**site.headers("admin"), "Content-Type": "application/json"}
    body = b'{"events": [{"kind": "x.y", "payload": {"v": NaN}}], "extra": Infinity}'
    response = client.post("/api/v1/events", content=body, headers=admin)
    assert response.status_code == 422
    assert "Extra inputs" in response.text


def test_nan_inside_a_payload_is_refused_not_stored(client: httpx.Client, site: Site) -> None:
    admin = {**site.headers("admin"), "Content-Type": "application/json"}
    body = b'{"events": [{"id": "nan-1", "kind": "x.y", "payload": {"v": NaN}}]}'
    response = client.post("/api/v1/events", content=body, headers=admin)
    assert response.status_code == 422
    assert "not storable" in response.text
    # the journal stays readable as JSON by every reader
    listed = client.get("/api/v1/events", params={"limit": 1000}, headers=site.headers("guard"))
    assert listed.status_code == 200
    assert "nan-1" not in listed.text
