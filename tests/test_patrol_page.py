"""The guard's patrol page on a phone, in a real headless Chromium (Debian's
``chromium``, driven by playwright) at 390×844: a checkpoint's QR URL sends the
guard through the login and back, the scan is confirmed with the checkpoint's
name; offline (the service worker keeps the page) a typed code and another QR
URL are queued with the phone's time and sent when the phone is back online;
the gateway stores each scan once with the phone's time and a near-zero skew,
even when the page sends an item twice; a forged QR URL is refused on the page
and recorded as a flag; a signed-out page keeps its queue until the guard logs
in again; the panic button needs a 2 s hold (silent and offline too). Without a browser: the routes,
the login's ``next`` (never to another site), the manifest and the strings.
A screenshot goes to test-artifacts/screenshots/patrol-390x844.png."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from gateway.web.i18n import STRINGS
from gateway.web.patrol import qr_signature
from tests.harness.browser import SHOTS, needs_chromium
from tests.harness.patrol import SECRET, events, patrol_site
from tests.harness.site import GatewayProcess, Site

WEB = Path(__file__).resolve().parents[1] / "gateway" / "web"
QUEUE = "JSON.parse(localStorage.getItem('patrol.queue.guard1') || '[]')"
HISTORY = "JSON.parse(localStorage.getItem('patrol.history.guard1') || '[]')"


def qr_path(checkpoint: str, sig: str | None = None) -> str:
    return f"/p/{checkpoint}?s={sig or qr_signature(SECRET, checkpoint)}"


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def sign_in(page: Any, site: Site) -> None:
    assert "/login" in page.url
    page.fill("#name", "guard1")
    page.fill("#token", site.tokens["guard"])
    page.click("button[type=submit]")


def queue_shows(page: Any, count: int) -> None:
    page.wait_for_function(
        "(n) => document.getElementById('queue').textContent === `待发送 ${n}`", arg=count
    )


@needs_chromium
def test_the_patrol_page_offline_first_on_a_phone(tmp_path: Path, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    site = patrol_site(tmp_path / "site")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        # the phone's camera opens the QR URL: log in, back to it, the scan is confirmed
        page.goto(site.url + qr_path("CP-1"))
        sign_in(page, site)
        page.wait_for_selector("#result.ok")
        assert "已打卡" in page.text_content("#result")
        assert "1号楼大堂" in page.text_content("#result")
        assert page.url == f"{site.url}/patrol"  # a reload does not scan again
        queue_shows(page, 0)
        assert page.is_hidden("#nfc")  # no Web NFC in desktop Chromium: no button
        assert page.text_content("#net") == "在线"

        # the service worker controls the page after a reload
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        page.reload()
        page.wait_for_function("navigator.serviceWorker.controller !== null")
        assert len(page.evaluate(HISTORY)) == 1
        assert "1号楼大堂" in page.text_content("#history")

        # underground: a typed code, then another QR URL opened while offline
        context.set_offline(True)
        page.wait_for_function("!navigator.onLine")
        page.fill("#code", "b201")
        page.click("#code-form button[type=submit]")
        queue_shows(page, 1)
        assert "离线" in page.text_content("#net")
        assert "已记录,联网后发送" in page.text_content("#result")
        time.sleep(0.3)
        page.goto(site.url + qr_path("CP-1"))  # the page comes from the service worker
        queue_shows(page, 2)
        assert page.url == f"{site.url}/patrol"
        assert "离线" in page.text_content("#net")
        queued = page.evaluate(QUEUE)
        assert [(q["method"], q.get("code"), q.get("checkpoint")) for q in queued] == [
            ("code", "B201", None),
            ("qr", None, "CP-1"),
        ]
        for item in queued:
            assert re.fullmatch(r"[A-Za-z0-9_-]{8,64}", item["scan_id"])
        assert len(events(site, "patrol.scan")) == 1  # nothing reached the gateway yet
        time.sleep(1.0)

        # back online: the queue is sent by itself
        context.set_offline(False)
        queue_shows(page, 0)
        page.wait_for_function("document.getElementById('net').textContent === '在线'")
        page.wait_for_selector("#result.ok")
        page.wait_for_function(
            "document.querySelectorAll('#history li.sent').length === 3", timeout=5000
        )
        assert "地下车库入口" in page.text_content("#history")  # the name from the gateway
        page.screenshot(path=str(SHOTS / "patrol-390x844.png"))

        # at the gateway: three scans, each with the phone's time of the scan
        history = {h["scan_id"]: h for h in page.evaluate(HISTORY)}
        scans = events(site, "patrol.scan")
        assert len(scans) == 3
        offline_ids = {q["scan_id"] for q in queued}
        for event in scans:
            payload = event["payload"]
            phone = history[payload["scan_id"]]["scanned_at"]
            assert when(payload["scanned_at"]) == when(phone)
            assert when(event["device_time"]) == when(phone)
            assert abs(payload["clock_skew_s"]) < 2.0
            assert payload["guard"] == "guard1"
            if payload["scan_id"] in offline_ids:
                assert when(phone) < when(event["received_at"]) - timedelta(seconds=0.8)
        by_id = {e["payload"]["scan_id"]: e["payload"] for e in scans}
        assert [by_id[q["scan_id"]]["checkpoint"] for q in queued] == ["CP-2", "CP-1"]
        assert sorted(p["method"] for p in by_id.values()) == ["code", "qr", "qr"]

        # the same items sent again (a queue written back, sent twice): stored once
        page.evaluate(
            "(items) => localStorage.setItem('patrol.queue.guard1', JSON.stringify(items))",
            queued,
        )
        page.click("#send-now")
        queue_shows(page, 0)
        csrf = json.loads(page.get_attribute("body", "data-boot") or "{}")["csrf"]
        body = {**queued[0], "sent_at": queued[0]["scanned_at"]}
        del body["kind"]
        again = page.evaluate(
            """async ([csrf, body]) => (await fetch('/api/v1/patrol/scans', {method: 'POST',
                 headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                 body: JSON.stringify(body)})).status""",
            [csrf, body],
        )
        assert again == 200
        assert len(events(site, "patrol.scan")) == 3

        # a forged QR URL: refused on the page, recorded at the gateway
        page.goto(site.url + qr_path("CP-1", "deadbeef" * 3))
        page.wait_for_selector("#result.bad")
        assert "不是本小区的巡更点" in page.text_content("#result")
        assert page.is_visible("#refused-box")
        assert "1号楼大堂" in page.text_content("#refused")
        queue_shows(page, 0)  # refused for good: not retried
        flags = events(site, "patrol.flag")
        forged = [f for f in flags if f["payload"].get("reason") == "forged_qr"]
        assert len(forged) == 1 and forged[0]["payload"]["tag"] == "CP-1"
        assert len(events(site, "patrol.scan")) == 3

        # signed out (e.g. the gateway restarted): the scan waits for a new login
        context.clear_cookies()
        page.fill("#code", "A101")
        page.click("#code-form button[type=submit]")
        page.wait_for_selector("#relogin:not([hidden])")
        assert "请重新登录" in page.text_content("#relogin")
        queue_shows(page, 1)
        page.click("#relogin-link")
        sign_in(page, site)
        page.wait_for_url(f"{site.url}/patrol")
        queue_shows(page, 0)
        assert page.is_hidden("#relogin")
        wait_until(lambda: len(events(site, "patrol.scan")) == 4)

        # the panic button: a tap does nothing, a 2 s hold sends it
        panic = page.locator("#panic").bounding_box()
        assert panic is not None and panic["height"] >= 60 and panic["y"] + panic["height"] <= 844
        page.mouse.move(panic["x"] + panic["width"] / 2, panic["y"] + panic["height"] / 2)
        page.mouse.down()
        time.sleep(0.6)
        page.mouse.up()
        time.sleep(0.3)
        assert not [h for h in page.evaluate(HISTORY) if h["kind"] == "panic"]
        page.mouse.down()
        time.sleep(2.4)
        page.mouse.up()
        page.wait_for_function(
            "document.getElementById('result').textContent.includes('求救已发出')"
        )
        wait_until(lambda: len(events(site, "patrol.panic")) == 1)
        panic_event = events(site, "patrol.panic")[0]["payload"]
        assert panic_event["guard"] == "guard1" and panic_event["silent"] is False
        assert abs(panic_event["clock_skew_s"]) < 2.0

        # a silent panic underground: nothing on the screen, sent the moment it is back
        context.set_offline(True)
        page.wait_for_function("!navigator.onLine")
        page.check("#silent")
        rows = "document.querySelectorAll('#history li').length"
        shown = page.evaluate(rows)
        page.mouse.move(panic["x"] + panic["width"] / 2, panic["y"] + panic["height"] / 2)
        page.mouse.down()
        time.sleep(2.4)
        page.mouse.up()
        queue_shows(page, 1)
        assert page.evaluate(rows) == shown
        assert "求救已记录" not in page.text_content("#result")
        context.set_offline(False)
        queue_shows(page, 0)
        wait_until(lambda: len(events(site, "patrol.panic")) == 2)
        silent = [e for e in events(site, "patrol.panic") if e["payload"]["silent"]]
        assert len(silent) == 1
        assert when(silent[0]["device_time"]) < when(silent[0]["received_at"])

        # the service worker keeps the page shell, never an API answer
        cached = page.evaluate(
            """async () => {
                 const cache = await caches.open('patrol-shell-v1');
                 return (await cache.keys()).map((r) => new URL(r.url).pathname).sort();
               }"""
        )
        assert "/patrol" in cached and "/static/patrol.js" in cached
        assert not [c for c in cached if c.startswith("/api/") or c.startswith("/p/")]
        assert errors == []
        context.close()
    finally:
        gateway.close()


def test_patrol_routes_login_next_and_manifest(tmp_path: Path) -> None:
    site = patrol_site(tmp_path / "site")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        with httpx.Client(base_url=site.url) as browser:
            away = browser.get(qr_path("CP-2"))
            assert away.status_code == 303
            assert away.headers["location"] == "/login?next=" + quote(qr_path("CP-2"), safe="")
            assert browser.get("/patrol").headers["location"] == "/login?next=%2Fpatrol"
            form = browser.get(away.headers["location"])
            assert f'name="next" value="{qr_path("CP-2")}"' in form.text
            token = site.tokens["guard"]
            for unsafe in ("//evil.example", "/\\evil.example", "https://evil.example", "/\t/x"):
                done = browser.post(
                    "/login", data={"name": "guard1", "token": token, "next": unsafe}
                )
                assert done.headers["location"] == "/", unsafe
            done = browser.post(
                "/login", data={"name": "guard1", "token": token, "next": qr_path("CP-2")}
            )
            assert done.status_code == 303 and done.headers["location"] == qr_path("CP-2")
            page = browser.get(qr_path("CP-2", 'x"><script>alert(1)</script>'))
            assert page.status_code == 200
            assert "<script>alert" not in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            found = re.search(r'data-boot="([^"]*)"', page.text)
            assert found is not None
            boot = json.loads(html.unescape(found.group(1)))
            assert boot["scan"] == {"checkpoint": "CP-2", "sig": 'x"><script>alert(1)</script>'}
            assert boot["checkpoints"] == {"CP-1": "1号楼大堂", "CP-2": "地下车库入口"}
            assert "B201" not in page.text and "A101" not in page.text  # codes stay secret
            assert "巡更打卡" in browser.get("/patrol").text
            english = browser.get("/lang/en", params={"next": "/patrol"})
            assert english.headers["location"] == "/patrol"
            assert "Car park entrance" in browser.get("/patrol").text
        worker = httpx.get(f"{site.url}/sw.js")
        assert worker.status_code == 200
        assert worker.headers["content-type"].startswith("text/javascript")
        assert "/api/" in worker.text
        manifest = httpx.get(f"{site.url}/patrol.webmanifest")
        assert manifest.headers["content-type"] == "application/manifest+json"
        data = manifest.json()
        assert data["start_url"] == "/patrol" and data["display"] == "standalone"
        assert "巡更打卡" in data["name"] and "Patrol" in data["name"]
        for icon in data["icons"]:
            assert httpx.get(site.url + icon["src"]).status_code == 200
    finally:
        gateway.close()


def test_every_string_the_patrol_script_uses_is_translated() -> None:
    script = (WEB / "static" / "patrol.js").read_text(encoding="utf-8")
    used = set(re.findall(r'\bt\("([a-z0-9_.\-]+)"\)', script))
    assert "patrol_offline" in used and "patrol_forged" in used
    assert not re.findall(r"\bt\(`", script), "keys built at run time cannot be checked"
    missing = sorted(used - set(STRINGS))
    assert not missing, f"strings used but not translated: {missing}"
    for source in ("patrol.js", "sw.js"):
        text = (WEB / "static" / source).read_text(encoding="utf-8")
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|\beval\(", text), source
