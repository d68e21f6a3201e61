"""The guard-room pages: login, the monitoring screen, printable handover records.

Server-rendered HTML (Jinja2, autoescaped) plus one small script that keeps
the screen live from the alarm stream (SSE) and the JSON API. No front-end
build: the script and the style sheet are plain files served from here.
Pages carry a strict Content-Security-Policy (scripts and styles only from
this gateway), so a value shown on the screen can never run as code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.auth import Principal
from gateway.config import AccessPoint
from gateway.journal.store import Journal
from gateway.web.handover import read_handover
from gateway.web.i18n import DEFAULT_LANG, LANGS, strings
from gateway.web.sessions import COOKIE, LIFETIME_S, LoginRefused, Session, SessionStore

HERE = Path(__file__).parent
LANG_COOKIE = "gw_lang"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_MAX_FORM = 4096


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
) -> APIRouter:
    """Routes for the pages (no /api prefix)."""
    router = APIRouter(include_in_schema=False)
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
    )
    static = _static_files()

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
    async def login_page(request: Request) -> HTMLResponse:
        return render("login.html", request, error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        client = request.client.host if request.client else "?"
        try:
            session = sessions.login(form.get("name", ""), form.get("token", ""), client)
        except LoginRefused as exc:
            response = render("login.html", request, status=401, error=str(exc))
            if exc.retry_after_s is not None:
                response.status_code = 429
                response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        done = RedirectResponse("/", status_code=303)
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
    async def set_language(lang: str) -> Response:
        response = RedirectResponse("/", status_code=303)
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
