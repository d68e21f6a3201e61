"""The guard-room screen in a real headless Chromium (Debian's ``chromium``,
driven by playwright): log in, an alarm from a real gate through the broker
appears within 1 s without reload, tick a step, acknowledge, shelve as a
supervisor, remote-open a gate (supervisor yes, guard no), make and sign a
handover record, switch to English; labels, keyboard and contrast checks.
Screenshots of the board at 1920×1080 and 390×844 go to test-artifacts/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from gateway.sim.gates import SimGate
from tests.harness.broker import Broker, MqttTestClient, simulated_devices
from tests.harness.browser import CONTRAST_JS, SHOTS, UNLABELLED_JS, login, needs_chromium
from tests.harness.site import GatewayProcess, Site, write_site

PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"
GATE = "N-GATE-1"
ALARM = f"door-held-open:{GATE}"

pytestmark = needs_chromium


def screen_site(directory: Path, broker: Broker) -> Site:
    text = (
        f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{broker.username}"\npassword = "{broker.password}"\n'
        f'\n[[devices.access_points]]\nid = "{GATE}"\nkind = "turnstile"\n'
        f'name = "北门闸机"\nprofile = "generic-json-gate"\ntopic_prefix = "site/gates/{GATE}"\n'
    )
    site = write_site(directory, extra=text)
    shutil.copy(PROFILES / "generic-json-gate.toml", directory / "profiles")
    return site


def test_the_guard_screen_end_to_end(tmp_path: Path, mqtt_broker: Broker, browser: object) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    site = screen_site(tmp_path / "site", mqtt_broker)
    gate = simulated_devices(mqtt_broker, gates=[SimGate(GATE, f"site/gates/{GATE}")], barriers=[])
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        # a wrong token is refused on the form
        context = browser.new_context()  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(f"{site.url}/login")
        page.fill("#name", "guard1")
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        assert "用户名或口令错误" in page.text_content(".error")
        context.close()

        guard = login(browser, site, "guard", 1920, 1080)
        guard.wait_for_selector("text=目前没有报警")
        time.sleep(0.5)  # the gateway's MQTT subscription is up well before; be sure
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            held = {"type": "held_open", "door": 1, "seq": 1, "ts": "2026-11-23T08:00:00+08:00"}
            started = time.monotonic()
            device.publish(f"site/gates/{GATE}/event", json.dumps(held))
            card = guard.wait_for_selector(f'[data-alarm="{ALARM}"]', timeout=1000)
            seen_after = time.monotonic() - started
        assert seen_after < 1.0, f"alarm on screen {seen_after:.2f} s after the device event"
        assert card is not None
        assert "未确认" in card.text_content() and "北门闸机" in card.text_content()
        # the guard may not shelve and may not open gates remotely
        assert card.query_selector("text=搁置") is None
        assert guard.query_selector(f'[data-device="{GATE}"]') is None
        refused = guard.evaluate(
            """async (csrf) => (await fetch('/api/v1/access/N-GATE-1/commands', {method: 'POST',
                 headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                 body: JSON.stringify({action: 'open_door', reason: 'test'})})).status""",
            json.loads(guard.get_attribute("body", "data-boot") or "{}")["csrf"],
        )
        assert refused == 403

        # tick the first step, then acknowledge
        card.query_selector("ol.steps button").click()
        guard.wait_for_selector(f'[data-alarm="{ALARM}"] li.done')
        guard.click(f'[data-alarm="{ALARM}"] button.primary')
        guard.wait_for_selector(f'[data-alarm="{ALARM}"].acknowledged')
        guard.screenshot(path=str(SHOTS / "board-1920x1080.png"))

        # labels, keyboard focus and contrast on the wall screen
        assert guard.evaluate(UNLABELLED_JS) == []
        guard.keyboard.press("Tab")
        assert guard.evaluate("document.activeElement.tagName") in ("BUTTON", "A", "SUMMARY")
        for selector in (".alarm .name", ".alarm .state", ".badge.P3", "h2", ".meta"):
            ratio = guard.eval_on_selector(selector, CONTRAST_JS)
            assert ratio >= 4.5, f"{selector}: contrast {ratio:.2f}"

        # a supervisor on a phone: shelve with a reason, open the gate remotely
        sup = login(browser, site, "supervisor", 390, 844)
        sup.wait_for_selector(f'[data-alarm="{ALARM}"]')
        sup.screenshot(path=str(SHOTS / "board-390x844.png"))
        sup.click(f'[data-alarm="{ALARM}"] >> text=搁置')
        sup.fill("#f-reason", "门禁维修中,已派人值守")
        sup.click("#dialog-ok")
        sup.wait_for_selector(f"#hidden-list [data-alarm='{ALARM}'].shelved", state="attached")
        assert sup.query_selector(f"#alarm-list [data-alarm='{ALARM}']") is None
        sup.click(f'[data-device="{GATE}"]')
        sup.fill("#f-reason", "访客证件核验后放行")
        sup.click("#dialog-ok")
        sup.wait_for_selector("#notice >> text=设备已确认", timeout=10_000)

        # handover: the guard makes the record, the supervisor (incoming) signs it
        guard.click("text=生成交接班记录")
        guard.fill("#f-notes", "北门闸机门长时间未关,已搁置待修")
        guard.fill("#f-staffing", "张三、李四在岗")
        guard.click("#dialog-ok")
        guard.wait_for_selector("#handover li >> text=等待接班人签收")
        assert guard.query_selector("#handover button >> text=接班签收") is None  # not to oneself
        sup.reload()
        sup.click("#handover button >> text=接班签收", timeout=10_000)
        sup.wait_for_selector("#handover li >> text=→ supervisor1")
        sup.click("#handover li a")
        sup.wait_for_selector("text=交接班记录")
        record = sup.text_content("main")
        assert "北门闸机门长时间未关,已搁置待修" in record and "supervisor1" in record
        assert "门长时间未关" in record  # the shelved alarm is in the record

        # English
        guard.click("text=English")
        guard.wait_for_selector("h2 >> text=Alarms")
        assert guard.query_selector("text=Gates and barriers") is not None
    finally:
        gateway.close()
        gate.stop()
    assert (SHOTS / "board-1920x1080.png").stat().st_size > 10_000
    assert (SHOTS / "board-390x844.png").stat().st_size > 5_000
