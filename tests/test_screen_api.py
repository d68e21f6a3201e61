"""The screen's server side without a browser: every string in both languages,
page sessions (login, rate limit, CSRF, logout), masked gate feed, handover
records and their signatures, the security headers of the pages."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from gateway.auth import Principal, TokenRegistry, hash_token
from gateway.config import User
from gateway.web.i18n import STRINGS, strings
from gateway.web.masking import mask_card, mask_plate, masked
from gateway.web.sessions import MAX_FAILURES, LoginRefused, SessionStore
from tests.harness.site import GatewayProcess, Site, write_site

WEB = Path(__file__).resolve().parents[1] / "gateway" / "web"


def test_every_string_the_pages_use_exists_in_chinese_and_english() -> None:
    script = "\n".join(
        (WEB / "static" / name).read_text(encoding="utf-8")
        for name in ("common.js", "board.js", "reports.js")
    )
    used = set(re.findall(r'\bt\("([a-z0-9_.\-]+)"\)', script))
    # keys built at run time: t(`state_${...}`) and friends
    for prefix in re.findall(r"\bt\(`([a-z_]+)\$\{", script):
        assert any(k.startswith(prefix) for k in STRINGS), prefix
    for template in (WEB / "templates").glob("*.html"):
        keys = re.findall(r"\bt\.([a-z0-9_]+)", template.read_text(encoding="utf-8"))
        used |= {k for k in keys if k != "get"}  # t.get('kind_' + …): a dict lookup
    missing = sorted(used - set(STRINGS))
    assert not missing, f"strings used but not translated: {missing}"
    for key, (zh, en) in STRINGS.items():
        assert zh.strip() and en.strip(), key
    for state in ("unacknowledged", "acknowledged", "rtn_unacknowledged", "normal", "shelved"):
        assert f"state_{state}" in STRINGS
    for priority in ("P1", "P2", "P3", "P4"):
        assert f"priority_{priority}" in STRINGS
    assert strings("en")["alarms"] == "Alarms" and strings("zh")["alarms"] == "报警"


def test_masking_keeps_enough_to_tell_apart_and_no_more() -> None:
    assert mask_card("12345678") == "****5678"
    assert mask_plate("皖A12345") == "皖A***45"
    guard = Principal("g", "guard")
    shown = masked({"card": "12345678", "plate": "皖A12345", "raw": {"card": "12345678"}}, guard)
    assert shown == {"card": "****5678", "plate": "皖A***45"}
    full = {"card": "12345678", "plate": "皖A12345"}
    assert masked(full, Principal("s", "supervisor")) == full


def test_logins_are_rate_limited_per_user_and_sessions_end_at_logout() -> None:
    users = [
        User(name="guard1", role="guard", token_sha256=hash_token("right-token")),
        User(name="central", role="central", token_sha256=hash_token("central-token")),
    ]
    store = SessionStore(TokenRegistry(users))
    with pytest.raises(LoginRefused):
        store.login("guard1", "right-token-but-other-user", "10.0.0.1")
    with pytest.raises(LoginRefused):
        store.login("admin", "right-token", "10.0.0.1")  # a valid token under another name
    for _ in range(MAX_FAILURES - 1):  # guard1's fifth failure in all
        with pytest.raises(LoginRefused):
            store.login("guard1", "wrong", "10.0.0.2")
    with pytest.raises(LoginRefused) as blocked:
        store.login("guard1", "right-token", "10.0.0.3")  # even the right token, for a while
    assert blocked.value.retry_after_s is not None
    with pytest.raises(LoginRefused):
        store.login("张三", "right-token", "10.0.0.4")  # a Chinese name: refused, not a crash
    with pytest.raises(LoginRefused, match="central system"):
        store.login("central", "central-token", "10.0.0.5")  # a system account has no screen
    other = SessionStore(TokenRegistry(users))
    session = other.login("guard1", "right-token", "10.0.0.1")
    assert other.get(session.id) == session and session.principal.role == "guard"
    other.logout(session.id)
    assert other.get(session.id) is None


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return write_site(tmp_path / "site")


def test_pages_need_a_session_and_carry_security_headers(site: Site) -> None:
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        with httpx.Client(base_url=site.url) as anonymous:
            assert anonymous.get("/").headers["location"] == "/login"
            assert anonymous.get("/api/v1/screen/status").status_code == 401
        with httpx.Client(base_url=site.url) as browser:
            page = browser.post("/login", data={"name": "guard1", "token": "nope"})
            assert page.status_code == 401 and "用户名或口令错误" in page.text
            done = browser.post("/login", data={"name": "guard1", "token": site.tokens["guard"]})
            assert done.status_code == 303
            cookie = done.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            board = browser.get("/")
            assert board.status_code == 200
            csp = board.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "<script>" not in board.text  # no inline script: the CSP would block it
            csrf = re.search(r"&#34;csrf&#34;: &#34;([^&]+)&#34;", board.text)
            assert csrf is not None
            # a state change with the cookie alone is refused (CSRF); with the token it works
            body = {"notes": "夜班平稳", "staffing": "张三"}
            assert browser.post("/api/v1/handovers", json=body).status_code == 403
            made = browser.post(
                "/api/v1/handovers", json=body, headers={"X-CSRF-Token": csrf.group(1)}
            )
            assert made.status_code == 200, made.text
            record = made.json()
            assert record["outgoing"] == "guard1" and record["notes"] == "夜班平稳"
            # the outgoing guard cannot sign for the incoming one
            sign = browser.post(
                f"/api/v1/handovers/{record['id']}/sign", headers={"X-CSRF-Token": csrf.group(1)}
            )
            assert sign.status_code == 409
            printable = browser.get(f"/handovers/{record['id']}")
            assert printable.status_code == 200 and "夜班平稳" in printable.text
            # logout ends the session
            browser.post("/logout", data={"csrf": csrf.group(1)})
            assert browser.get("/api/v1/screen/status").status_code == 401
        signed = httpx.post(
            f"{site.url}/api/v1/handovers/{record['id']}/sign", headers=site.headers("supervisor")
        )
        assert signed.status_code == 200 and signed.json()["incoming"] == "supervisor1"
        again = httpx.post(
            f"{site.url}/api/v1/handovers/{record['id']}/sign", headers=site.headers("admin")
        )
        assert again.status_code == 409
        assert (
            httpx.get(f"{site.url}/api/v1/handovers", headers=site.headers("central")).status_code
            == 403
        )
        audit = httpx.get(f"{site.url}/api/v1/audit", headers=site.headers("supervisor")).json()
        actions = {(a["action"], a["who"]) for a in audit["audit"]}
        assert {("handover.create", "guard1"), ("handover.sign", "supervisor1")} <= actions
    finally:
        gateway.close()


def test_the_gate_feed_masks_cards_and_plates_for_guards(site: Site) -> None:
    gateway = GatewayProcess(site)
    try:
        gateway.wait_ready()
        events = [
            {"kind": "access.granted", "device": "G1", "payload": {"card": "87654321"}},
            {"kind": "vehicle.entry", "device": "B1", "payload": {"plate": "皖A88888"}},
            {"kind": "meter.reading", "device": "M1", "payload": {}},
        ]
        stored = httpx.post(
            f"{site.url}/api/v1/events", json={"events": events}, headers=site.headers("admin")
        )
        assert stored.status_code == 200
        guard = httpx.get(f"{site.url}/api/v1/access/feed", headers=site.headers("guard")).json()
        assert guard["masked"] is True
        assert [e["kind"] for e in guard["events"]] == ["vehicle.entry", "access.granted"]
        assert guard["events"][0]["payload"]["plate"] == "皖A***88"
        assert guard["events"][1]["payload"]["card"] == "****4321"
        sup = httpx.get(f"{site.url}/api/v1/access/feed", headers=site.headers("supervisor"))
        assert sup.json()["events"][0]["payload"]["plate"] == "皖A88888"
    finally:
        gateway.close()
