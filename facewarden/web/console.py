"""The web console (filled in by the console commit)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def build_console(service: Any, keys: Any) -> Starlette:
    async def index(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("facewarden console")

    return Starlette(routes=[Route("/", index)])
