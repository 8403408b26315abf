"""The web console: server-rendered pages (Jinja2) over the same API and the same keys.

Logging in stores the API key in an HttpOnly, SameSite=Strict cookie; the pages' scripts
call /api/v1 with it (plus the X-Console header, see api.bearer). Nothing comes from a CDN:
one stylesheet and one script in ./static. Pages a key's scopes do not allow are neither
listed nor served; unprocessed originals (quarantine) are for the admin scope only.
"""

from __future__ import annotations

import time
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from facewarden.handlers.idphoto_presets import PRESETS
from facewarden.web import STATIC, TEMPLATES
from facewarden.web.api import SESSION_COOKIE
from facewarden.web.auth import ApiKey, KeyStore
from facewarden.web.service import ApiService

#: (path, title, scope needed)
PAGES = [("/", "Dashboard", None), ("/try", "Try it", "anonymize"), ("/studio", "ID photo", "idphoto"),
         ("/kiosk", "Check-in", "checkin"), ("/subjects", "Subjects", "enroll"),
         ("/quarantine", "Quarantine", "admin"), ("/audit", "Audit", "admin")]


def build_console(service: ApiService, keys: KeyStore) -> Starlette:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))

    def session(request: Request) -> ApiKey | None:
        token = request.cookies.get(SESSION_COOKIE)
        return keys.check(token) if token else None

    def render(request: Request, template: str, key: ApiKey | None, **context: Any) -> HTMLResponse:
        nav = [(p, t) for p, t, scope in PAGES if key is not None and (scope is None or key.allows(scope))]
        html = env.get_template(template).render(key=key, nav=nav, path=request.url.path, **context)
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' "
                                           "blob: data:; media-src 'self' blob:; style-src 'self'; "
                                           "script-src 'self'; frame-ancestors 'none'"})

    def page(template: str, scope: str | None, **context: Any):
        async def endpoint(request: Request) -> Response:
            key = session(request)
            if key is None:
                return RedirectResponse("/login", status_code=303)
            if scope is not None and not key.allows(scope):
                return render(request, "denied.html", key, scope=scope)
            return render(request, template, key, **context)

        return endpoint

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "login.html", None, error=None)
        form = await request.form()
        token = str(form.get("key") or "").strip()
        key = keys.check(token)
        if key is None:
            resp = render(request, "login.html", None, error="That key is unknown or revoked.")
            resp.status_code = 401
            return resp
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600,
                        secure=request.url.scheme == "https")
        return resp

    async def logout(_request: Request) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    def need(request: Request, scope: str | None) -> ApiKey | Response:
        key = session(request)
        if key is None:
            return JSONResponse({"error": "auth.missing", "message": "log in first"}, status_code=401)
        if scope and not key.allows(scope):
            return JSONResponse({"error": "auth.scope", "message": f"needs the {scope!r} scope"}, status_code=403)
        return key

    async def stats(request: Request) -> Response:
        key = need(request, None)
        if isinstance(key, Response):
            return key
        return JSONResponse(await run_in_threadpool(_stats, service))

    async def verify_chain(request: Request) -> Response:
        key = need(request, "admin")
        if isinstance(key, Response):
            return key
        report = await run_in_threadpool(service.audit.verify)
        return JSONResponse({"ok": report.ok, "records": service.audit.count(),
                             "problems": [str(p) for p in getattr(report, "problems", [])][:20]})

    async def lookup(request: Request) -> Response:
        key = need(request, "admin")
        if isinstance(key, Response):
            return key
        digest = request.query_params.get("sha256", "").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return JSONResponse({"error": "audit.bad_digest", "message": "give a sha256 in hex"}, status_code=422)
        rows = await run_in_threadpool(service.audit.by_sha256, digest)
        return JSONResponse([{"seq": r.get("seq"), "recorded_at": r.get("recorded_at"), "outcome": r.get("outcome"),
                              "handler": r.get("handler"), "source": r.get("source"),
                              "role": "input" if (r.get("input") or {}).get("sha256") == digest else "output",
                              "input": (r.get("input") or {}).get("key"), "hash": r.get("hash")} for r in rows])

    async def preview(request: Request) -> Response:
        key = need(request, "admin")
        if isinstance(key, Response):
            return key
        blob = await run_in_threadpool(service.blurred_preview, int(request.path_params["seq"]))
        if blob is None:
            return JSONResponse({"error": "preview.unavailable", "message": "no preview: the file could not be "
                                 "decoded or anonymized, so it is not shown"}, status_code=415)
        return Response(blob, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    presets = sorted(PRESETS)
    return Starlette(routes=[
        Route("/", page("dashboard.html", None)),
        Route("/try", page("try.html", "anonymize")),
        Route("/studio", page("studio.html", "idphoto", presets=presets)),
        Route("/kiosk", page("kiosk.html", "checkin")),
        Route("/subjects", page("subjects.html", "enroll")),
        Route("/quarantine", page("quarantine.html", "admin")),
        Route("/audit", page("audit.html", "admin")),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/console/stats", stats),
        Route("/console/audit/verify", verify_chain),
        Route("/console/audit/lookup", lookup),
        Route("/console/quarantine/{seq:int}/preview", preview),
        Mount("/static", app=StaticFiles(directory=STATIC)),
    ])


def _stats(service: ApiService) -> dict[str, Any]:
    """Queue depth, jobs per minute over the last 15 minutes, and the latest jobs."""
    recent = service.audit.latest("job", 200)
    now = time.time()

    def age(r: dict[str, Any]) -> float:
        try:
            return now - (time.mktime(time.strptime(r["recorded_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)
        except (KeyError, ValueError):
            return 1e9

    last15 = [r for r in recent if age(r) <= 900]
    depth = None
    if service.queue is not None:
        try:
            depth = service.queue.depth()
        except Exception:  # noqa: BLE001 - the dashboard shows "unknown" rather than failing
            depth = None
    jobs = [{"seq": r.get("seq"), "at": r.get("recorded_at"), "handler": r.get("handler"), "source": r.get("source"),
             "outcome": r.get("outcome"), "reason": (r.get("reason") or {}).get("code"),
             "faces": (r.get("facts") or {}).get("faces"), "ms": (r.get("timings") or {}).get("total_ms")}
            for r in recent[:20]]
    return {"queue_depth": depth, "per_minute": round(len(last15) / 15, 2),
            "failures_15m": sum(r.get("outcome") in ("rejected", "quarantined") for r in last15),
            "ok_15m": sum(r.get("outcome") == "ok" for r in last15), "recent": jobs}
