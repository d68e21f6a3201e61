"""`gateway demo`: runs with nothing installed, serves its API, stops on time or Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from gateway.patrol.model import PatrolSettings
from gateway.patrol.rounds import rounds_between
from gateway.sim.demo import PATROL_ROUTE, plan_patrol
from gateway.web.patrol import qr_signature

DEMO = [sys.executable, "-m", "gateway.cli", "demo", "--port", "0"]


def test_demo_runs_for_its_duration_and_prints_a_summary(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [*DEMO, "--duration", "8", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    assert 8 <= time.monotonic() - started < 25
    out = result.stdout
    assert re.search(r"API \(OpenAPI docs\): +http://127\.0\.0\.1:\d+/docs", out)
    assert "token for guard" in out
    summary = out.split("summary", 1)[1]
    ingested = re.search(r"events ingested: (\d+) this run, (\d+) in the journal", summary)
    assert ingested is not None and int(ingested.group(1)) >= 2
    assert (tmp_path / "journal.db").exists()

    # The simulated slice of the reference site is polled: ~220 meters, all answering.
    devices = re.search(r"devices: +(\d+) configured", summary)
    assert devices is not None and int(devices.group(1)) >= 200
    readings = re.search(r"meter readings: +(\d+)", summary)
    assert readings is not None and int(readings.group(1)) > 0
    states = re.search(r"devices online/degraded/offline: (\d+)/(\d+)/(\d+)", summary)
    assert states is not None and int(states.group(1)) >= 200
    assert (int(states.group(2)), int(states.group(3))) == (0, 0)
    # Readings reached the demo's central system (the reference receiver).
    assert re.search(r"central system \(sim\): +http://127\.0\.0\.1:\d+/", out)
    delivered = re.search(r"central holds (\d+) readings", summary)
    assert delivered is not None and int(delivered.group(1)) > 0
    # The embedded broker carries the simulated gates and barriers.
    gates = re.search(r"gates: +(\d+) messages", summary)
    assert gates is not None and int(gates.group(1)) > 0
    # The site file the demo ran on is written next to the journal and is valid.
    check = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(tmp_path / "demo-site.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    # The guard tour: the phone page, and a checkpoint's QR URL signed with the site's secret.
    assert re.search(r"guard tour \(巡更\): +http://127\.0\.0\.1:\d+/patrol", out)
    qr = re.search(r"http://127\.0\.0\.1:\d+/p/(CP\d+)\?s=([0-9a-f]{24})", out)
    assert qr is not None
    site = tomllib.loads((tmp_path / "demo-site.toml").read_text("utf-8"))
    assert qr.group(2) == qr_signature(site["patrol"]["signing_secret"], qr.group(1))
    assert [w["id"] for w in site["devices"]["patrol_wands"]] == ["WAND-CRADLE-1"]
    assert site["patrol"]["schedules"][0]["route"] == PATROL_ROUTE

    again = subprocess.run(
        [*DEMO, "--duration", "1", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    total = re.search(r"this run, (\d+) in the journal", again.stdout)
    assert total is not None and int(total.group(1)) > int(ingested.group(2))


def test_demo_serves_the_api_with_the_printed_tokens_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*DEMO, "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "demo ended before printing its welcome"
            lines.append(line)
        text = "".join(lines)
        url = re.search(r"(http://127\.0\.0\.1:\d+)/healthz", text).group(1)  # type: ignore[union-attr]
        guard = re.search(r"token for guard +(\S+)", text).group(1)  # type: ignore[union-attr]
        response = httpx.get(
            f"{url}/api/v1/events",
            params={"order": "asc", "limit": 1},  # readings may already be in
            headers={"Authorization": f"Bearer {guard}"},
        )
        assert response.status_code == 200
        assert response.json()["events"][0]["kind"] == "gateway.started"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "summary" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_demo_tour_starts_a_round_seconds_after_the_demo() -> None:
    zone = ZoneInfo("Asia/Shanghai")
    site = tomllib.loads((Path(__file__).parents[1] / "gateway/sim/demo-site.toml").read_text())
    for second in range(60):
        now = datetime(2026, 11, 24, 23, 59, second, 500_000, tzinfo=zone)  # to past midnight
        plan = plan_patrol(zone, now)
        assert timedelta(seconds=10) <= plan.first - now < timedelta(seconds=22)
        assert 5 <= plan.every_min < 6
        schedule = tomllib.loads(plan.schedule_toml())["patrol"]["schedules"]
        settings = PatrolSettings.model_validate(
            {"routes": site["patrol"]["routes"], "schedules": schedule}
        )
        rounds = rounds_between(settings, zone, now, now + timedelta(minutes=12))
        assert [r.start for r in rounds][:2] == [
            plan.first,
            plan.first + timedelta(minutes=plan.every_min),
        ]
