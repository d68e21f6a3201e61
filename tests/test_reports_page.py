"""The reports page (报事/报修) in a real headless Chromium: a guard takes a P1
report on the form, sees its countdown, the masked resident and the next step;
dispatches, marks on scene and resolved through the dialogs; cannot close nor
see the phone; a supervisor sees the contact (audited) and closes it; the
month's figures show it on time; the guard screen's link counts open reports;
the handover record lists them. Labels and contrast checked; screenshots of
the page at 1920×1080 and 390×844 go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.harness.browser import CONTRAST_JS, SHOTS, UNLABELLED_JS, login, needs_chromium
from tests.harness.site import GatewayProcess, running, write_site

pytestmark = needs_chromium


def dialog(page: object, **fields: str) -> None:
    for name, value in fields.items():
        page.fill(f"#f-{name}", value)  # type: ignore[attr-defined]
    page.click("#dialog-ok")  # type: ignore[attr-defined]


def test_a_report_through_its_closed_loop_on_the_page(tmp_path: Path, browser: object) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    site = write_site(tmp_path / "site")
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        guard = login(browser, site, "guard", 1920, 1080)
        guard.wait_for_selector("#reports-link >> text=(0 未完成)")
        guard.click("#reports-link")
        guard.wait_for_selector("#r-urgency-P1")
        guard.select_option("#r-category", "repair")
        guard.select_option("#r-subcategory", "water")
        guard.check("#r-urgency-P1")
        assert guard.is_hidden("#agreed-box")
        guard.fill("#r-building", "3栋")
        guard.fill("#r-unit", "2单元501")
        guard.fill("#r-description", "厨房水管爆裂,水漫到楼道")
        guard.fill("#r-contact-name", "张三")
        guard.fill("#r-contact-phone", "13812345678")
        guard.click("#report-form button[type=submit]")
        card = guard.wait_for_selector("article.report.P1")
        assert card is not None
        text = card.text_content() or ""
        assert "特急" in text and "报修 · 水管/漏水" in text and "3栋 2单元501" in text
        assert "张* 138****5678" in text and "下一步: 派人处理" in text
        countdown = guard.text_content("article.report .countdown") or ""
        assert countdown.startswith("距到场时限 9:") or countdown == "距到场时限 10:00", countdown
        assert "13812345678" not in (guard.content())
        assert guard.query_selector("article.report >> text=核实关闭") is None
        assert guard.query_selector("article.report >> text=查看联系方式(留痕)") is None
        guard.screenshot(path=str(SHOTS / "reports-1920x1080.png"))
        assert guard.evaluate(UNLABELLED_JS) == []
        for selector in ("article.report .name", ".report .next", ".badge.P1", ".meta", "h2"):
            ratio = guard.eval_on_selector(selector, CONTRAST_JS)
            assert ratio >= 4.5, f"{selector}: contrast {ratio:.2f}"

        guard.click("article.report button >> text=派单")
        dialog(guard, to="工程部 王师傅")
        guard.wait_for_selector("article.report >> text=下一步: 确认处理人到场")
        guard.click("article.report button >> text=已到场")
        dialog(guard)
        guard.wait_for_selector("article.report >> text=按时到场")
        guard.click("article.report button >> text=已处理")
        dialog(guard, note="更换阀门")
        guard.wait_for_selector("article.report >> text=下一步: 请主管核实关闭")

        sup = login(browser, site, "supervisor", 390, 844)
        sup.goto(f"{site.url}/reports")
        sup.wait_for_selector("article.report")
        sup.screenshot(path=str(SHOTS / "reports-390x844.png"), full_page=True)
        sup.click("article.report button >> text=查看联系方式(留痕)")
        sup.wait_for_selector("article.report .contact >> text=张三 13812345678")
        sup.click("article.report button >> text=核实关闭")
        dialog(sup, note="已回访住户")
        sup.wait_for_selector("text=没有未完成的报事")
        sup.wait_for_selector("#stats td >> text=100%")
        audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("admin")).json()
        actions = [a["action"] for a in audit["audit"]]
        assert "reports.contact_view" in actions and "reports.closed" in actions

        # English
        guard.click("text=English")
        guard.wait_for_selector("h2 >> text=Open reports")
        assert guard.query_selector("text=Take a report") is not None
    finally:
        gateway.close()
    assert (SHOTS / "reports-1920x1080.png").stat().st_size > 10_000


def test_the_handover_record_lists_open_reports_and_the_shifts_audit(tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    with running(site):
        body = {
            "category": "security",
            "subcategory": "suspicious",
            "urgency": "P2",
            "description": "地库有可疑人员徘徊",
            "area": "地下车库B区",
        }
        taken = httpx.post(
            f"{site.url}/api/v1/reports", json=body, headers=site.headers("guard")
        ).json()
        record = httpx.post(
            f"{site.url}/api/v1/handovers", json={}, headers=site.headers("guard")
        ).json()
        [line] = record["open_reports"]
        assert line["report_id"] == taken["report_id"] and line["owner"] == "guard1"
        assert line["location"] == "地下车库B区" and line["kind"] == "安全·可疑人员"
        # the shift's audit trail travels with the record, each row in one record only
        assert [(a["action"], a["target"]) for a in record["audit"]] == [
            ("reports.reported", taken["report_id"])
        ]
        following = httpx.post(
            f"{site.url}/api/v1/handovers", json={}, headers=site.headers("guard")
        ).json()
        assert [a["action"] for a in following["audit"]] == ["handover.create"]
        page = httpx.get(
            f"{site.url}/api/v1/handovers/{record['id']}", headers=site.headers("guard")
        )
        assert page.json()["audit"] == record["audit"]
