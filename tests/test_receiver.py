"""The reference central receiver, over real HTTP: contract, auth, limits, faults, page.

One receiver serves the module (two sites: one plain, one that must sign);
each test uses its own ids, and faults are cleared around every test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.sync.receiver import CentralReceiver, Faults

SITE, TOKEN = "site-a", "token-site-a"
SIGNED, SIGNED_TOKEN, SECRET = "site-b", "token-site-b", "b-signing-secret"
READINGS = f"/v1/sites/{SITE}/meter-readings"
INCIDENTS = f"/v1/sites/{SITE}/incidents"
TICKET_NO = r"T-\d{4}-\d{6}"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reading(reading_id: str | None = None, **changes: Any) -> dict[str, Any]:
    meter = f"m-{uuid.uuid4().hex[:8]}"
    item: dict[str, Any] = {
        "reading_id": reading_id or f"{meter}:import_kwh:2026-11-23T08:00:00+08:00",
        "meter_id": meter,
        "utility": "electricity",
        "register": "import_kwh",
        "value": 12345.67,
        "unit": "kWh",
        "read_at": "2026-11-23T08:00:00+08:00",
        "quality": "good",
        "source": "modbus",
        "billing_period": None,
        "flags": [],
    }
    item.update(changes)
    return item


def batch(*items: dict[str, Any]) -> dict[str, Any]:
    return {"batch_id": uuid.uuid4().hex, "readings": list(items)}


def incident(incident_id: str, revision: int, **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "incident_id": incident_id,
        "revision": revision,
        "type": "power_outage",
        "priority": "P1",
        "title": "Building 3 main supply lost",
        "location": "B3 switch room",
        "state": "open",
        "opened_at": "2026-11-23T08:00:00+08:00",
        "respond_by": "2026-11-23T08:15:00+08:00",
        "updated_at": "2026-11-23T08:00:00+08:00",
        "handler": None,
        "supervisor": "sup-02",
        "timeline": [{"at": "2026-11-23T08:00:00+08:00", "what": "raised", "by": "gateway"}],
    }
    item.update(changes)
    return item


def signed(body: bytes, *, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    stamp = int(time.time() if at is None else at)
    return {**auth(SIGNED_TOKEN), "X-Signature": f"sha256={digest}", "X-Timestamp": str(stamp)}


def statuses(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [result["status"] for result in response.json()["results"]]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralReceiver]:
    db = tmp_path_factory.mktemp("central") / "central.db"
    with CentralReceiver(
        db, sites={SITE: TOKEN, SIGNED: SIGNED_TOKEN}, signing_secrets={SIGNED: SECRET}
    ) as receiver:
        yield receiver


@pytest.fixture
def rx(receiver: CentralReceiver) -> Iterator[CentralReceiver]:
    receiver.clear_faults()
    yield receiver
    receiver.clear_faults()
    deadline = time.monotonic() + 5
    while receiver.is_down and time.monotonic() < deadline:  # a failed down_for test
        time.sleep(0.05)


@pytest.fixture
def client(rx: CentralReceiver) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rx.base_url, headers=auth(), timeout=5) as client:
        yield client


# -- meter readings ---------------------------------------------------------------------


def test_each_reading_is_accepted_duplicate_or_rejected_with_a_reason(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    good = reading()
    bad = [
        reading(value=-1),
        reading(value=float("nan")),
        reading(read_at="2026-11-23T08:00:00"),
        reading(read_at="2026-02-30T08:00:00+08:00"),
        reading(utility="steam"),
        reading(quality="great"),
        reading(source="carrier-pigeon"),
        reading(billing_period="2026-13"),
        reading(value="12.5"),
        {k: v for k, v in reading().items() if k != "meter_id"},
        reading(gap_before_s=900),
    ]
    items = [good, *bad, dict(good), "not an object"]
    before = rx.stats()["readings"]

    body = json.dumps(batch(*items)).encode()  # NaN as JavaScript writes it
    assert b"NaN" in body
    response = client.post(READINGS, content=body)

    results = response.json()["results"]
    assert statuses(response) == ["accepted", *["rejected"] * len(bad), "duplicate", "rejected"]
    errors = [result["error"] for result in results[1 : 1 + len(bad)]]
    assert errors[0] == "value must be >= 0"
    assert errors[1] == "value must be a finite number"
    assert "read_at" in errors[2] and "offset" in errors[2]
    assert errors[3] == "read_at is not a real date"
    assert "utility" in errors[4] and "electricity" in errors[4]
    assert "quality" in errors[5]
    assert "source" in errors[6]
    assert errors[7] == "billing_period must be YYYY-MM"
    assert "value" in errors[8]
    assert errors[9] == "meter_id is required"
    assert errors[10] == "gap_before_s is not a field of the contract"
    assert results[1]["reading_id"] == bad[0]["reading_id"]
    assert results[-1] == {
        "reading_id": None,
        "status": "rejected",
        "error": "item must be a JSON object",
    }
    after = rx.stats()["readings"]
    assert after["stored"] - before["stored"] == 1
    assert after["duplicate"] - before["duplicate"] == 1
    assert after["rejected"] - before["rejected"] == len(bad) + 1

    # The same batch again: stored once, received three times.
    assert statuses(client.post(READINGS, json=batch(good)))[0] == "duplicate"
    assert rx.reading_deliveries(good["reading_id"]) == 3
    assert rx.reading_deliveries(bad[0]["reading_id"]) == 0


def test_a_reading_is_stored_with_every_field_as_sent(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    item = reading(
        value=42,
        read_at="2026-12-01T00:00:00.5Z",
        quality="estimated",
        billing_period="2026-11",
        flags=["interpolated", "gap_filled"],
    )
    del item["billing_period"], item["flags"]  # optional: null and [] when left out
    plain = reading(billing_period="2026-11", flags=["rollover"])
    assert statuses(client.post(READINGS, json=batch(item, plain))) == ["accepted"] * 2

    stored = {row["reading_id"]: row for row in rx.readings(SITE)}
    row = stored[item["reading_id"]]
    assert {k: row[k] for k in item} == item
    assert row["billing_period"] is None and row["flags"] == []
    assert row["site_id"] == SITE and row["deliveries"] == 1
    assert stored[plain["reading_id"]]["flags"] == ["rollover"]
    assert stored[plain["reading_id"]]["billing_period"] == "2026-11"


def test_a_body_that_is_not_a_batch_is_400(client: httpx.Client) -> None:
    cases = [
        b'{"batch_id": "x", "readings": [',
        b"[]",
        b'{"batch_id": "x", "readings": {}}',
        b'{"readings": []}',
        b'{"batch_id": "x", "readings": [], "extra": 1}',
        b"",
    ]
    for body in cases:
        response = client.post(READINGS, content=body)
        assert response.status_code == 400, body
        assert response.json()["error"], body


def test_more_than_1000_items_or_1_mib_is_413_and_the_connection_goes_on(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    before = rx.stats()["readings"]["stored"]
    too_many = batch(*[reading() for _ in range(1001)])
    assert client.post(READINGS, json=too_many).status_code == 413
    assert (
        statuses(client.post(READINGS, json=batch(*too_many["readings"][:1000]))).count("accepted")
        == 1000
    )

    body = json.dumps(batch(reading(), reading())).encode()
    padded = body[:-1] + b" " * (1024 * 1024 - len(body)) + b"}"
    assert len(padded) == 1024 * 1024  # exactly 1 MiB is still allowed
    assert statuses(client.post(READINGS, content=padded)) == ["accepted", "accepted"]
    response = client.post(READINGS, content=padded[:-1] + b" }")
    assert response.status_code == 413
    assert "1048576" in response.json()["error"]
    assert statuses(client.post(READINGS, json=batch(reading()))) == ["accepted"]
    assert rx.stats()["readings"]["stored"] - before == 1003


def test_chunked_bodies_keep_alive_and_100_continue_pass_through_the_proxy(
    rx: CentralReceiver,
) -> None:
    first, second = reading(), reading()
    body = json.dumps(batch(first)).encode()
    with httpx.Client(base_url=rx.base_url, headers=auth()) as client:
        chunks = iter([body[:10], body[10:]])
        assert statuses(client.post(READINGS, content=chunks)) == ["accepted"]

    # Three requests on one raw connection, each sent after the previous answer;
    # the last one waits for "100 Continue" before its body, as curl does.
    third = reading()
    with socket.create_connection(("127.0.0.1", rx.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for item, expect in ((first, False), (second, False), (third, True)):
            payload = json.dumps(batch(item)).encode()
            sock.sendall(
                f"POST {READINGS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Length: {len(payload)}\r\n".encode()
                + (b"Expect: 100-continue\r\n" if expect else b"")
                + b"\r\n"
            )
            if expect:
                assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
                assert reader.readline() == b"\r\n"
            sock.sendall(payload)
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answer = json.loads(reader.read(length))
            expected = "duplicate" if item is first else "accepted"
            assert answer["results"][0]["status"] == expected
        reader.close()


# -- auth --------------------------------------------------------------------------------


def test_a_missing_or_unknown_token_is_401_and_another_sites_token_is_403(
    rx: CentralReceiver,
) -> None:
    body = batch(reading())
    with httpx.Client(base_url=rx.base_url, timeout=5) as client:
        response = client.post(READINGS, json=body)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert client.post(READINGS, json=body, headers=auth("nope")).status_code == 401
        assert client.get(f"/v1/sites/{SITE}/ticket-updates").status_code == 401
        other = client.post(READINGS, json=body, headers=auth(SIGNED_TOKEN))
        assert other.status_code == 403
        assert SIGNED in other.json()["error"]
        unknown_site = client.post("/v1/sites/site-x/meter-readings", json=body, headers=auth())
        assert unknown_site.status_code == 403
    assert rx.reading_deliveries(body["readings"][0]["reading_id"]) == 0


def test_a_signing_site_needs_a_fresh_signature_of_the_exact_body(rx: CentralReceiver) -> None:
    path = f"/v1/sites/{SIGNED}/meter-readings"
    item = reading()
    body = json.dumps(batch(item)).encode()
    other = json.dumps(batch(reading())).encode()
    with httpx.Client(base_url=rx.base_url, timeout=5) as client:
        refusals = [
            client.post(path, content=body, headers=auth(SIGNED_TOKEN)),
            client.post(path, content=body, headers=signed(other)),
            client.post(path, content=body, headers=signed(body, secret="wrong")),
            client.post(path, content=body, headers=signed(body, at=time.time() - 301)),
            client.post(path, content=body, headers=signed(body, at=time.time() + 301)),
            client.post(path, content=body, headers={**signed(body), "X-Timestamp": "soon"}),
        ]
        assert [r.status_code for r in refusals] == [401] * len(refusals)
        assert rx.reading_deliveries(item["reading_id"], SIGNED) == 0

        ok = client.post(path, content=body, headers=signed(body, at=time.time() - 250))
        assert statuses(ok) == ["accepted"]
        feed = client.get(f"/v1/sites/{SIGNED}/ticket-updates", headers=auth(SIGNED_TOKEN))
        assert feed.status_code == 200  # no body, nothing to sign
    assert rx.reading_deliveries(item["reading_id"], SIGNED) == 1
    assert rx.reading_deliveries(item["reading_id"], SITE) == 0


# -- incidents and the central feeds -------------------------------------------------------


def test_incidents_keep_the_highest_revision_and_one_ticket_number(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex

    def send(*items: dict[str, Any]) -> list[dict[str, Any]]:
        response = client.post(INCIDENTS, json={"incidents": list(items)})
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    created = send(incident(first, 1), incident(second, 1), incident("x", 1, priority="P9"))
    assert [r["status"] for r in created] == ["accepted", "accepted", "rejected"]
    ticket, other_ticket = created[0]["ticket_no"], created[1]["ticket_no"]
    year = datetime.now(UTC).year
    assert ticket.startswith(f"T-{year}-") and len(ticket) == len("T-2026-000001")
    assert int(other_ticket[-6:]) == int(ticket[-6:]) + 1
    assert created[0]["error"] is None
    assert created[2]["ticket_no"] is None and "priority" in created[2]["error"]

    ack = incident(first, 3, state="acknowledged", handler="guard-07")
    results = send(ack, incident(first, 3), incident(first, 2, title="older"))
    assert [(r["status"], r["ticket_no"]) for r in results] == [
        ("accepted", ticket),
        ("stale", ticket),
        ("stale", ticket),
    ]
    stored = {i["incident_id"]: i for i in rx.incidents(SITE)}[first]
    assert stored["revision"] == 3
    assert stored["state"] == "acknowledged" and stored["handler"] == "guard-07"
    assert stored["ticket_no"] == ticket and stored["deliveries"] == 4


def test_ticket_updates_are_a_feed_of_the_sites_tickets_paged_by_cursor(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    path = f"/v1/sites/{SIGNED}/ticket-updates"
    with httpx.Client(base_url=rx.base_url, headers=auth(SIGNED_TOKEN), timeout=5) as site_b:
        start = site_b.get(path).json()
        assert start["updates"] == [] and start["next"] == "0"
        assert site_b.get(path, params={"after": "abc"}).status_code == 400

        incident_id = uuid.uuid4().hex
        payload = json.dumps({"incidents": [incident(incident_id, 1)]}).encode()
        created = site_b.post(
            f"/v1/sites/{SIGNED}/incidents", content=payload, headers=signed(payload)
        )
        ticket = created.json()["results"][0]["ticket_no"]
        rx.add_ticket_update(
            incident_id=incident_id, state="assigned", note="电工 Li", site_id=SIGNED
        )
        resolved = {"ticket_no": ticket, "state": "resolved", "note": "breaker replaced"}
        injected = site_b.post("/_sim/ticket-updates", json=resolved)
        assert injected.status_code == 201, injected.text
        unknown = site_b.post("/_sim/ticket-updates", json={"incident_id": "none", "state": "x"})
        assert unknown.status_code == 404

        page = site_b.get(path, params={"after": start["next"]}).json()
        assert [(u["state"], u["ticket_no"], u["incident_id"]) for u in page["updates"]] == [
            ("assigned", ticket, incident_id),
            ("resolved", ticket, incident_id),
        ]
        assert page["updates"][0]["note"] == "电工 Li"
        assert page["next"] == page["updates"][-1]["cursor"] == injected.json()["cursor"]
        empty = site_b.get(path, params={"after": page["next"]}).json()
        assert empty == {"updates": [], "next": page["next"]}
    # The other site sees none of them.
    updates = client.get(f"/v1/sites/{SITE}/ticket-updates").json()["updates"]
    assert all(u["incident_id"] != incident_id for u in updates)


def test_outage_notices_are_a_feed_paged_500_at_a_time(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    path = f"/v1/sites/{SITE}/outage-notices"
    after = client.get(path).json()["next"]
    window = {"starts_at": "2026-11-24T09:00:00+08:00", "ends_at": "2026-11-24T12:00:00+08:00"}
    for n in range(500):
        rx.add_outage_notice(utility="water", scope=["b3", "b4"], reason=f"repair {n}", **window)
    notice = {"utility": "gas", "scope": ["b5"], "reason": "valve", **window}
    assert client.post("/_sim/outage-notices", json=notice).status_code == 201
    backwards = {**notice, "ends_at": window["starts_at"]}
    assert client.post("/_sim/outage-notices", json=backwards).status_code == 400

    first = client.get(path, params={"after": after}).json()
    assert len(first["notices"]) == 500
    assert first["notices"][0]["reason"] == "repair 0"
    assert first["notices"][0]["scope"] == ["b3", "b4"]
    assert set(first["notices"][0]) == {*notice, "notice_id"}
    rest = client.get(path, params={"after": first["next"]}).json()
    assert [(n["utility"], n["reason"]) for n in rest["notices"]] == [("gas", "valve")]
    assert client.get(path, params={"after": rest["next"]}).json() == {
        "notices": [],
        "next": rest["next"],
    }


def test_a_heartbeat_is_kept_and_answered_204(rx: CentralReceiver, client: httpx.Client) -> None:
    beat = {
        "at": "2026-11-23T08:00:00+08:00",
        "version": "0.1.0",
        "backlog": {"meter-readings": 12, "incidents": 0},
        "devices": {"online": 120, "offline": 3},
    }
    response = client.post(f"/v1/sites/{SITE}/heartbeat", json=beat)
    assert response.status_code == 204 and response.content == b""
    last = rx.last_heartbeat(SITE)
    assert last is not None and last["backlog"] == beat["backlog"] and last["received_at"]
    broken = client.post(f"/v1/sites/{SITE}/heartbeat", json={**beat, "at": "yesterday"})
    assert broken.status_code == 400 and "at" in broken.json()["error"]


# -- faults -----------------------------------------------------------------------------


def test_error_rate_answers_500_without_storing_and_is_reproducible(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    def run() -> list[int]:
        rx.set_faults(error_rate=0.5, seed=7)
        codes = []
        for _ in range(40):
            item = reading()
            code = client.post(READINGS, json=batch(item)).status_code
            assert rx.reading_deliveries(item["reading_id"]) == (1 if code == 200 else 0)
            codes.append(code)
        return codes

    codes = run()
    assert set(codes) == {200, 500}
    assert 8 <= codes.count(500) <= 32
    assert run() == codes  # same seed, same faults


def test_throttle_answers_429_with_retry_after(rx: CentralReceiver, client: httpx.Client) -> None:
    rx.set_faults(throttle_rate=1.0, retry_after_s=7)
    item = reading()
    response = client.post(READINGS, json=batch(item))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert client.get(f"/v1/sites/{SITE}/outage-notices").status_code == 429
    assert rx.reading_deliveries(item["reading_id"]) == 0
    assert rx.stats()["faults_applied"]["throttle"] >= 2


def test_delay_slows_every_answer(rx: CentralReceiver, client: httpx.Client) -> None:
    rx.faults.delay_s = 0.4  # a plain assignment takes effect too
    started = time.monotonic()
    assert statuses(client.post(READINGS, json=batch(reading()))) == ["accepted"]
    assert time.monotonic() - started >= 0.4
    with pytest.raises(httpx.ReadTimeout):
        client.post(READINGS, json=batch(reading()), timeout=0.15)


def test_reset_after_store_stores_the_batch_but_the_client_sees_a_reset(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    rx.set_faults(reset_after_store_rate=1.0)
    item = reading()
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post(READINGS, json=batch(item))
    assert rx.reading_deliveries(item["reading_id"]) == 1

    # A raw socket proves it is an RST, not an orderly close.
    payload = json.dumps(batch(reading())).encode()
    with socket.create_connection(("127.0.0.1", rx.port), timeout=5) as sock:
        sock.sendall(
            f"POST {READINGS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)

    rx.clear_faults()
    assert statuses(client.post(READINGS, json=batch(item))) == ["duplicate"]
    assert rx.reading_deliveries(item["reading_id"]) == 2
    assert rx.stats()["faults_applied"]["reset"] >= 2


def test_silent_reads_requests_and_never_answers(rx: CentralReceiver, client: httpx.Client) -> None:
    rx.set_faults(silent=True)
    item = reading()
    with pytest.raises(httpx.ReadTimeout):
        client.post(READINGS, json=batch(item), timeout=0.5)
    assert client.get("/").status_code == 200  # the page and /_sim stay reachable
    off = client.post("/_sim/faults", json={"silent": False})
    assert off.status_code == 200 and off.json()["faults"]["silent"] is False
    assert statuses(client.post(READINGS, json=batch(item))) == ["accepted"]


def test_down_for_refuses_connections_then_comes_back_on_the_same_port(
    rx: CentralReceiver,
) -> None:
    url = rx.base_url
    with httpx.Client(base_url=url, headers=auth(), timeout=2) as client:
        assert client.get(f"/v1/sites/{SITE}/ticket-updates").status_code == 200
        rx.down_for(1.0)
        assert rx.is_down
        with pytest.raises(httpx.ConnectError):
            client.get(f"/v1/sites/{SITE}/ticket-updates")
        deadline = time.monotonic() + 5
        while rx.is_down and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not rx.is_down and rx.base_url == url
        assert client.get(f"/v1/sites/{SITE}/ticket-updates").status_code == 200

        # The same through the control plane: answered first, then down.
        response = client.post("/_sim/faults", json={"down_for_s": 0.5})
        assert response.status_code == 200
        with pytest.raises(httpx.ConnectError):
            client.get("/_sim/stats")
        time.sleep(1.0)
        assert client.get("/_sim/stats").status_code == 200


def test_unauthorized_answers_401_to_every_api_request(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    rx.set_faults(unauthorized=True)
    assert client.post(READINGS, json=batch(reading())).status_code == 401
    assert client.get(f"/v1/sites/{SITE}/ticket-updates").status_code == 401
    assert client.post("/_sim/faults", json={"unauthorized": False}).status_code == 200
    assert client.get(f"/v1/sites/{SITE}/ticket-updates").status_code == 200


def test_faults_are_set_over_http_only_with_a_site_token(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    assert client.post("/_sim/faults", json={"error_rate": 1}, headers=auth("x")).status_code == 401
    assert client.post("/_sim/faults", json={"error_rate": 2}).status_code == 400
    assert client.post("/_sim/faults", json={"explode": True}).status_code == 400
    response = client.post("/_sim/faults", json={"error_rate": 1.0, "retry_after_s": 3})
    assert response.json()["faults"]["error_rate"] == 1.0
    assert rx.faults.error_rate == 1.0
    assert client.get(f"/v1/sites/{SITE}/outage-notices").status_code == 500
    cleared = client.post("/_sim/faults", json={"clear": True}).json()["faults"]
    assert cleared == {**Faults().as_dict(), "seed": cleared["seed"]}
    assert client.get(f"/v1/sites/{SITE}/outage-notices").status_code == 200
    with pytest.raises(ValueError, match="error_rate"):
        rx.set_faults(error_rate=-0.1)


# -- page, stats, lifecycle -------------------------------------------------------------


def test_the_page_shows_what_arrived_and_escapes_it(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    title = "<script>alert('x')</script> 3号楼停电"
    response = client.post(
        INCIDENTS, json={"incidents": [incident(uuid.uuid4().hex, 1, title=title)]}
    )
    ticket = response.json()["results"][0]["ticket_no"]
    beat = {"at": "2026-11-23T08:00:00+08:00", "version": "1", "backlog": {}, "devices": {}}
    assert client.post(f"/v1/sites/{SITE}/heartbeat", json=beat).status_code == 204
    rx.set_faults(delay_s=0.01)

    page = httpx.get(f"{rx.base_url}/")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; 3号楼停电" in page.text
    assert "<script>" not in page.text
    assert ticket in page.text
    assert "delay_s=0.01" in page.text
    assert f"/v1/sites/{SITE}/incidents" in page.text
    assert f"{SITE}: last " in page.text  # its last heartbeat


def test_stats_count_streams_and_requests_by_status(
    rx: CentralReceiver, client: httpx.Client
) -> None:
    before = client.get("/_sim/stats").json()
    client.post(READINGS, json=batch(reading(), reading(value=-5)))
    client.post(READINGS, content=b"{")
    after = client.get("/_sim/stats").json()
    assert after["readings"]["stored"] - before["readings"]["stored"] == 1
    assert after["readings"]["rejected"] - before["readings"]["rejected"] == 1
    by_status = after["requests"]["by_status"]
    assert by_status["200"] - before["requests"]["by_status"].get("200", 0) == 1
    assert by_status["400"] - before["requests"]["by_status"].get("400", 0) == 1
    assert after["faults"] == rx.faults.as_dict()


def test_a_restarted_receiver_still_knows_what_it_stored(tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    item = reading()
    for expected in ("accepted", "duplicate"):
        with CentralReceiver(db, sites={SITE: TOKEN}) as rx:
            response = httpx.post(f"{rx.base_url}{READINGS}", json=batch(item), headers=auth())
            assert statuses(response) == [expected]
    stopped = CentralReceiver(db, sites={SITE: TOKEN})
    assert stopped.reading_deliveries(item["reading_id"]) == 2
    assert stopped.stats()["readings"]["stored"] == 1


def test_central_sim_command_serves_until_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gateway.cli", "central-sim", "--db", str(tmp_path / "c.db")]
    options = ["--site-id", SITE, "--token", TOKEN, "--throttle-rate", "1", "--retry-after", "9"]
    proc = subprocess.Popen(
        [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("central-sim listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        response = httpx.post(f"{url}{READINGS}", json=batch(reading()), headers=auth())
        assert response.status_code == 429 and response.headers["retry-after"] == "9"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
