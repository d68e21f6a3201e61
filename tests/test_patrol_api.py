"""The patrol API in the running service: signed QR scans, forged ones refused
and recorded, typed codes, unknown tags flagged, a resent scan stored once,
the panic button raising a P1 with the guard's last checkpoint."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gateway.web.patrol import qr_signature
from tests.harness.broker import Broker, MqttTestClient
from tests.harness.patrol import PATROL, SECRET, events, patrol_site
from tests.harness.site import GatewayProcess, Site, write_site

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"


def post(site: Site, path: str, body: dict[str, Any], role: str = "guard") -> httpx.Response:
    return httpx.post(f"{site.url}/api/v1/patrol/{path}", json=body, headers=site.headers(role))


def scan_body(method: str, **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "scan_id": uuid.uuid4().hex,
        "method": method,
        "scanned_at": (now - timedelta(minutes=3)).isoformat(),
        "sent_at": now.isoformat(),
        **fields,
    }


def test_patrol_scans_and_the_panic_button(tmp_path: Path) -> None:
    site = patrol_site(tmp_path / "site")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        good = scan_body("qr", checkpoint="CP-1", sig=qr_signature(SECRET, "CP-1"))
        answer = post(site, "scans", good)
        assert answer.status_code == 200 and answer.json()["name"] == "1号楼大堂"
        assert post(site, "scans", good).status_code == 200  # the offline queue resent it
        forged = scan_body("qr", checkpoint="CP-2", sig="0" * 24)
        assert post(site, "scans", forged).status_code == 403
        typed = post(site, "scans", scan_body("code", code="a101"))
        assert typed.json()["checkpoint"] == "CP-1"
        nfc = post(site, "scans", scan_body("nfc", tag="04a22b1a"))
        assert nfc.json()["checkpoint"] == "CP-2"
        unknown = post(site, "scans", scan_body("nfc", tag="DEADBEEF99"))
        assert unknown.status_code == 200 and unknown.json()["known"] is False
        assert (
            post(site, "scans", scan_body("qr", checkpoint="CP-1"), role="central").status_code
            == 403
        )

        scans = events(site, "patrol.scan")
        assert len(scans) == 4  # the resent one stored once
        first = next(e for e in scans if e["payload"]["scan_id"] == good["scan_id"])
        assert first["payload"]["guard"] == "guard1"
        assert abs(first["payload"]["clock_skew_s"]) < 5
        assert first["device_time"] < first["received_at"]  # the phone's own scan time kept
        forged_flags = [
            e for e in events(site, "patrol.flag") if e["payload"]["reason"] == "forged_qr"
        ]
        assert len(forged_flags) == 1

        press = {
            "panic_id": uuid.uuid4().hex,
            "silent": True,
            "pressed_at": datetime.now(UTC).isoformat(),
            "sent_at": datetime.now(UTC).isoformat(),
        }
        assert post(site, "panic", press).json()["last_checkpoint"] in ("CP-1", "CP-2")

        def alarms() -> dict[str, dict[str, Any]]:
            board = httpx.get(f"{site.url}/api/v1/alarms", headers=site.headers("guard")).json()
            return {a["type"]: a for a in board["alarms"]}

        deadline = time.monotonic() + 15
        while not {"guard_panic", "patrol_suspicious"} <= set(alarms()):
            assert time.monotonic() < deadline, sorted(alarms())
            time.sleep(0.2)
        panic = alarms()["guard_panic"]
        assert panic["priority"] == "P1" and "guard1" in panic["location"]
        report = httpx.get(
            f"{site.url}/api/v1/patrol/report",
            params={"shift": "current", "format": "csv"},
            headers=site.headers("guard"),
        )
        assert report.headers["content-type"].startswith("text/csv")
        assert report.content.startswith("\ufeff轮次 round".encode())
        totals = httpx.get(f"{site.url}/api/v1/patrol/report", headers=site.headers("guard"))
        assert set(totals.json()["totals"]) == {
            "rounds",
            "not_started",
            "complete",
            "completion_avg_pct",
        }
        status = httpx.get(f"{site.url}/api/v1/patrol/status", headers=site.headers("guard"))
        assert status.json()["enabled"] is True
        qr = httpx.get(f"{site.url}/api/v1/patrol/checkpoints", headers=site.headers("supervisor"))
        assert qr.json()["checkpoints"][0]["qr_path"] == f"/p/CP-1?s={qr_signature(SECRET, 'CP-1')}"
        assert (
            httpx.get(
                f"{site.url}/api/v1/patrol/checkpoints", headers=site.headers("guard")
            ).status_code
            == 403
        )
    finally:
        gateway.close()


# the smallest valid JPEG header is enough for the type check
JPEG = (
    "data:image/jpeg;base64,"
    + __import__("base64").b64encode(b"\xff\xd8\xff\xe0" + b"0" * 64).decode()
)


def test_a_problem_reported_on_the_round_becomes_an_incident_with_its_photo(
    tmp_path: Path,
) -> None:
    site = patrol_site(tmp_path / "site")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        now = datetime.now(UTC).isoformat()
        body = {
            "report_id": uuid.uuid4().hex,
            "category": "repair",
            "note": "消防通道灯不亮",
            "checkpoint": "CP-1",
            "photo": JPEG,
            "reported_at": now,
            "sent_at": now,
        }
        answer = post(site, "reports", body)
        assert answer.status_code == 200, answer.text
        name = answer.json()["photo"]
        assert name == f"{body['report_id']}.jpg"
        assert post(site, "reports", body).status_code == 200  # resent: same file, one event
        assert len(events(site, "patrol.report")) == 1
        bad = {**body, "report_id": uuid.uuid4().hex, "photo": "data:image/jpeg;base64,QUJD"}
        assert post(site, "reports", bad).status_code == 422  # "ABC" is no image
        photo = httpx.get(
            f"{site.url}/api/v1/patrol/photos/{name}", headers=site.headers("supervisor")
        )
        assert photo.status_code == 200 and photo.content.startswith(b"\xff\xd8\xff")
        assert (
            httpx.get(
                f"{site.url}/api/v1/patrol/photos/..%2Fjournal.db", headers=site.headers("guard")
            ).status_code
            == 404
        )
        deadline = time.monotonic() + 10
        while True:
            board = httpx.get(f"{site.url}/api/v1/alarms", headers=site.headers("guard")).json()
            found = [a for a in board["alarms"] if a["type"] == "patrol_report"]
            if found:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "1号楼大堂" in found[0]["location"] and found[0]["incident"] is True
    finally:
        gateway.close()


def test_a_guard_card_at_an_mqtt_checkpoint_reader_counts_as_a_scan(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    reader = (
        f'\n[mqtt]\nhost = "{mqtt_broker.host}"\nport = {mqtt_broker.port}\n'
        f'username = "{mqtt_broker.username}"\npassword = "{mqtt_broker.password}"\n'
        '\n[[devices.access_points]]\nid = "CP1-READER"\nkind = "reader"\n'
        'profile = "generic-json-checkpoint-reader"\ntopic_prefix = "site/patrol/CP1-READER"\n'
        '\n[[patrol.guards]]\nid = "guard1"\nname = "张三"\ncards = ["0F00AA0001"]\n'
    )
    tour = PATROL.replace('code = "A101"\n', 'code = "A101"\nreader = "CP1-READER"\n', 1)
    site = write_site(tmp_path / "site", extra=tour + reader)
    shutil.copy(PROFILES / "generic-json-checkpoint-reader.toml", tmp_path / "site" / "profiles")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        time.sleep(0.5)  # the gateway's SUBSCRIBE
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            for seq in (1, 2):  # read twice within a minute: a duplicate, flagged
                read = {"card": "0f00aa0001", "seq": seq, "ts": datetime.now(UTC).isoformat()}
                device.publish("site/patrol/CP1-READER/read", json.dumps(read))
        deadline = time.monotonic() + 15
        while not (
            flags := [
                e for e in events(site, "patrol.flag") if e["payload"]["reason"] == "duplicate"
            ]
        ):
            assert time.monotonic() < deadline, "the reader's reads never became scans"
            time.sleep(0.2)
        [duplicate] = flags
        assert duplicate["payload"]["checkpoint"] == "CP-1"
        assert duplicate["payload"]["guard"] == "guard1"
        assert duplicate["payload"]["method"] == "gate"
    finally:
        gateway.close()
