"""The daemon's one HTTP app: source webhooks, health, readiness and Prometheus metrics.

Sources that take HTTP requests expose ``routes() -> list[starlette.routing.Route]`` and
are mounted as they are; this module knows none of them. Probes:

- ``/healthz``: the process answers (liveness; never touches a dependency, so a broker
  outage does not make the orchestrator restart a healthy daemon).
- ``/readyz``: every ready check passes (sources connected, workers/models up, queue
  reachable); 503 with the failing checks otherwise.
- ``/metrics``: Prometheus text format, summed over worker processes (see metrics.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from facewarden.daemon import metrics
from facewarden.errors import ConfigError

log = structlog.get_logger("facewarden.http")

ReadyCheck = Callable[[], "dict[str, bool] | bool"]


def _run_checks(ready: ReadyCheck | dict[str, Callable[[], bool]] | None) -> dict[str, bool]:
    if ready is None:
        return {}
    if isinstance(ready, dict):
        out: dict[str, bool] = {}
        for name, check in ready.items():
            try:
                out[name] = bool(check())
            except Exception:
                out[name] = False
        return out
    try:
        result = ready()
    except Exception:
        return {"ready": False}
    return (
        {k: bool(v) for k, v in result.items()}
        if isinstance(result, dict)
        else {"ready": bool(result)}
    )


def build_app(
    settings: Any = None,
    *,
    sources: Iterable[Any] = (),
    services: dict[str, Any] | None = None,
    ready: ReadyCheck | dict[str, Callable[[], bool]] | None = None,
    extra_routes: Iterable[BaseRoute] = (),
) -> Starlette:
    """``ready`` is either one callable returning ``{check: bool}`` (the daemon's
    ``Daemon.ready``) or a dict of named callables returning bool."""
    services = services or {}
    queue = services.get("queue")
    collectors: list[Any] = []
    if queue is not None and hasattr(queue, "depth"):
        collectors.append(
            metrics.QueueDepthCollector(queue.depth, getattr(queue, "dead_letter_depth", None))
        )
    started = time.time()

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "alive", "uptime_s": round(time.time() - started, 1)})

    async def readyz(_request: Request) -> Response:
        checks = await run_in_threadpool(_run_checks, ready)
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def metrics_endpoint(_request: Request) -> Response:
        body, ctype = await run_in_threadpool(metrics.render, collectors)
        return Response(body, media_type=None, headers={"Content-Type": ctype})

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    seen = {"/healthz", "/readyz", "/metrics"}
    for source in sources:
        get_routes = getattr(source, "routes", None)
        if get_routes is None:
            continue
        for route in get_routes():
            path = getattr(route, "path", None)
            if path in seen:
                raise ConfigError(
                    "config.invalid",
                    f"sources: {getattr(source, 'name', source)!r} wants HTTP path "
                    f"{path!r}, which is already taken; give it another `path`",
                )
            seen.add(path)
            routes.append(route)
    routes.extend(extra_routes)

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return PlainTextResponse("not found", status_code=404)

    return Starlette(routes=routes, exception_handlers={404: not_found})


class HttpHandle:
    """A running server; ``stop()`` finishes in-flight requests and returns."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread):
        self.server, self.thread = server, thread

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(2)


def serve_in_thread(app: Starlette, bind: str, port: int, *, timeout: float = 15.0) -> HttpHandle:
    """Starts uvicorn in a daemon thread; returns once it listens, or raises ConfigError
    (e.g. the port is taken) so the daemon fails at start-up, not later."""
    config = uvicorn.Config(
        app,
        host=bind,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError(
                "http.bind_failed",
                f"http: could not listen on {bind}:{port} "
                f"({failure[0] if failure else 'timed out'})",
            )
        time.sleep(0.02)
    handle = HttpHandle(server, thread)
    log.info("http.listening", url=handle.url)
    return handle
