"""The guard-room pages: login, the monitoring screen, printable handover records,
guard-room reports (报事/报修) and the guard's patrol page on the phone (巡更打卡).

Server-rendered HTML (Jinja2, autoescaped) plus one small script that keeps
the screen live from the alarm stream (SSE) and the JSON API. No front-end
build: the script and the style sheet are plain files served from here.
Pages carry a strict Content-Security-Policy (scripts and styles only from
this gateway), so a value shown on the screen can never run as code.

The patrol page is offline-first: a manifest makes it installable and a
service worker (served from the root, registered for ``/p``: the page and the
QR URLs ``/p/…``, not the wall screen) keeps the page shell, while the page
queues scans on the phone until they are sent.
A checkpoint's QR tag opens ``/p/{checkpoint}?s={sig}``: that page records the
scan and the API checks the signature (a forgery is refused and recorded there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.auth import Principal
from gateway.config import AccessPoint
from gateway.journal.store import Journal
from gateway.patrol.model import PatrolSettings
from gateway.web.handover import read_handover
from gateway.web.i18n import DEFAULT_LANG, LANGS, strings
from gateway.web.sessions import COOKIE, LIFETIME_S, LoginRefused, Session, SessionStore

HERE = Path(__file__).parent
LANG_COOKIE = "gw_lang"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_MAX_FORM = 4096
_MAX_QR_PART = 64  # the API's limit for a checkpoint id and a signature


def _static_files() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in (HERE / "static").iterdir():
        if path.suffix in _STATIC_TYPES:
            files[path.name] = (path.read_bytes(), _STATIC_TYPES[path.suffix])
    return files


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


NextParam = Annotated[str | None, Query(alias="next")]
"""Where to go after the login form (``/login?next=/patrol``)."""


def _safe_next(value: str | None) -> str | None:
    """A local path to return to after login, or None (never another site)."""
    if not value or len(value) > 512 or not value.startswith("/") or value.startswith("//"):
        return None
    # browsers read a backslash as "/" and drop tabs: "/\evil" and "/<TAB>/evil" are "//evil"
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return None
    return value


def _login_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(here, safe="")


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise HTTPException(413, "form too large")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    return {k: v[0] for k, v in parsed.items()}


def create_page_router(
    sessions: SessionStore,
    journal: Journal,
    *,
    site_name: str,
    zone: str,
    access_points: list[AccessPoint],
    shelve_max_s: float,
    patrol: PatrolSettings | None = None,
) -> APIRouter:
    """Routes for the pages (no /api prefix)."""
    router = APIRouter(include_in_schema=False)
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
    )
    static = _static_files()
    manifest = (HERE / "static" / "patrol.webmanifest").read_bytes()
    service_worker = (HERE / "static" / "sw.js").read_bytes()
    patrol_settings = patrol or PatrolSettings()

    def lang_of(request: Request) -> str:
        lang = request.cookies.get(LANG_COOKIE, DEFAULT_LANG)
        return lang if lang in LANGS else DEFAULT_LANG

    def render(name: str, request: Request, status: int = 200, **values: Any) -> HTMLResponse:
        lang = lang_of(request)
        html = env.get_template(name).render(
            t=strings(lang), lang=lang, site_name=site_name, **values
        )
        return HTMLResponse(html, status_code=status, headers=_headers())

    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(COOKIE))

    @router.get("/static/{name}")
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            raise HTTPException(404, "no such file")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})

    @router.get("/login")
    async def login_page(request: Request, next_: NextParam = None) -> HTMLResponse:
        return render("login.html", request, error=None, next=_safe_next(next_))

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        client = request.client.host if request.client else "?"
        try:
            session = sessions.login(form.get("name", ""), form.get("token", ""), client)
        except LoginRefused as exc:
            response = render(
                "login.html",
                request,
                status=401,
                error=str(exc),
                next=_safe_next(form.get("next")),
            )
            if exc.retry_after_s is not None:
                response.status_code = 429
                response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        done = RedirectResponse(_safe_next(form.get("next")) or "/", status_code=303)
        done.set_cookie(
            COOKIE, session.id, max_age=int(LIFETIME_S), httponly=True, samesite="strict"
        )
        return done

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        # Logging out needs no CSRF check: the cookie is SameSite=Strict, and the
        # worst a forged logout does is make a guard sign in again.
        session = session_of(request)
        if session is not None:
            sessions.logout(session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @router.get("/lang/{lang}")
    async def set_language(lang: str, next_: NextParam = None) -> Response:
        response = RedirectResponse(_safe_next(next_) or "/", status_code=303)
        if lang in LANGS:
            response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="strict")
        return response

    @router.get("/")
    async def board(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        return render(
            "board.html",
            request,
            user=session.principal,
            csrf=session.csrf,
            boot=json.dumps(
                _boot(session, lang_of(request), zone, access_points, shelve_max_s),
                ensure_ascii=False,
            ),
        )

    @router.get("/handovers/{handover_id}")
    async def handover_page(handover_id: str, request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if not session.principal.may("handover.read"):
            raise HTTPException(403, f"role {session.principal.role!r} may not handover.read")
        try:
            record = await journal.query(lambda conn: read_handover(conn, handover_id))
        except KeyError:
            raise HTTPException(404, f"no handover {handover_id}") from None
        return render("handover.html", request, record=record, user=session.principal, zone=zone)

    @router.get("/reports")
    async def reports_page(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse(_login_url(request), status_code=303)
        if not session.principal.may("reports.read"):
            raise HTTPException(403, f"role {session.principal.role!r} may not reports.read")
        who = session.principal
        boot = {
            "user": who.name,
            "role": who.role,
            "may": {
                "write": who.may("reports.write"),
                "close": who.may("reports.close"),
                "contact": who.may("reports.contact"),
            },
            "csrf": session.csrf,
            "lang": lang_of(request),
            "zone": zone,
            "strings": strings(lang_of(request)),
        }
        return render(
            "reports.html",
            request,
            user=who,
            csrf=session.csrf,
            boot=json.dumps(boot, ensure_ascii=False),
        )

    def patrol_page(request: Request, scan: dict[str, str] | None) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse(_login_url(request), status_code=303)
        if not session.principal.may("patrol.scan"):
            raise HTTPException(403, f"role {session.principal.role!r} may not patrol.scan")
        lang = lang_of(request)
        return render(
            "patrol.html",
            request,
            user=session.principal,
            csrf=session.csrf,
            boot=json.dumps(
                _patrol_boot(session, lang, zone, patrol_settings, scan), ensure_ascii=False
            ),
        )

    @router.get("/patrol")
    async def patrol_home(request: Request) -> Response:
        return patrol_page(request, None)

    @router.get("/p/{checkpoint}")
    async def patrol_qr(checkpoint: str, request: Request, s: str = "") -> Response:
        # The signature is checked by the scan API, which records a forgery; the page
        # only passes both through (as JSON in an escaped attribute, never as markup).
        return patrol_page(
            request, {"checkpoint": checkpoint[:_MAX_QR_PART], "sig": s[:_MAX_QR_PART]}
        )

    @router.get("/patrol.webmanifest")
    async def patrol_manifest() -> Response:
        return Response(
            manifest,
            media_type="application/manifest+json",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/sw.js")
    async def patrol_service_worker() -> Response:
        # Served from the root so that its scope covers /patrol and the QR URLs /p/….
        return Response(
            service_worker,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return router


def _boot(
    session: Session,
    lang: str,
    zone: str,
    access_points: list[AccessPoint],
    shelve_max_s: float,
) -> Mapping[str, Any]:
    """What the page script needs to start (no secrets but the page's CSRF token)."""
    who: Principal = session.principal
    return {
        "user": who.name,
        "display_name": who.display_name or who.name,
        "role": who.role,
        "may": {
            "acknowledge": who.may("alarms.acknowledge"),
            "shelve": who.may("alarms.shelve"),
            "command": who.may("access.command"),
            "handover": who.may("handover.write"),
            "reports": who.may("reports.read"),
        },
        "csrf": session.csrf,
        "lang": lang,
        "zone": zone,
        "shelve_max_s": shelve_max_s,
        "strings": strings(lang),
        "access_points": [
            {"id": a.id, "kind": a.kind, "name": a.name or a.id}
            for a in access_points
            if a.kind != "detector"
        ],
    }


def _patrol_boot(
    session: Session,
    lang: str,
    zone: str,
    patrol: PatrolSettings,
    scan: dict[str, str] | None,
) -> Mapping[str, Any]:
    """What the patrol page needs: checkpoint names (never their typed codes: a code
    in the page would let a guard check in from anywhere), the QR scan to record."""
    who: Principal = session.principal
    return {
        "user": who.name,
        "display_name": who.display_name or who.name,
        "csrf": session.csrf,
        "lang": lang,
        "zone": zone,
        "strings": strings(lang),
        "checkpoints": {
            c.id: (c.name_en if lang == "en" and c.name_en else c.name) for c in patrol.checkpoints
        },
        "scan": scan,
    }
