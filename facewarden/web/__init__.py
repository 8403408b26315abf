"""The HTTP API (/api/v1) and the web console (/), mounted into the daemon's one HTTP app.

``routes()`` is all daemon/http.py needs: the API is a FastAPI app mounted at /api/v1 (its
OpenAPI document at /api/v1/openapi.json, a self-contained docs page at /api/v1/docs) and
the console is a Starlette app at / (mounted last, so /healthz, /metrics and the webhooks
keep their paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute, Mount

from facewarden.config.schema import Settings

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"


def routes(settings: Settings, *, stores: dict[str, Any] | None = None, audit: Any = None, queue: Any = None,
           console: bool = True) -> list[BaseRoute]:
    from facewarden.web.api import build_api
    from facewarden.web.auth import KeyStore
    from facewarden.web.service import ApiService

    service = ApiService(settings, stores=stores, audit=audit, queue=queue)
    keys = KeyStore(settings.state_dir)
    api = build_api(service, keys)
    out: list[BaseRoute] = [Mount("/api/v1", app=api)]
    if console:
        from facewarden.web.console import build_console

        out.append(Mount("/", app=build_console(service, keys)))
    return out
