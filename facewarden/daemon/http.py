"""The daemon's one HTTP app: source webhooks, health, readiness and Prometheus metrics.

Sources that take HTTP requests expose ``routes() -> list[starlette.routing.Route]`` and
are mounted as they are; this module knows none of them. Probes:

- ``/healthz``: the process answers (liveness; never touches a dependency, so a broker
  outage does not make the orchestrator restart a healthy daemon).
- ``/readyz``: every component in the Health registry is ready (every worker process has
  loaded its models, every source is connected and watching, the queue and stores are
  reachable); 503 otherwise, and the body's ``not_ready`` names each part and why.
- ``/metrics``: Prometheus text format, summed over worker processes (see metrics.py).
- ``GET /jobs/{id}``: where a job is (queued, running, done with its outputs and audit
  hash). A daemon feature, served whenever HTTP is on and the app has a job-status
  service; requests are signed with ``http.job_status_secret`` (or a dms-webhook source's
  secret) as described in signing.py.
"""

from __future__ import annotations

import re
import socket
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
from facewarden.daemon.health import Health
from facewarden.daemon.signing import BadSignature, verify
from facewarden.errors import ConfigError, FacewardenError

log = structlog.get_logger("facewarden.http")

ReadyCheck = Callable[[], "dict[str, bool] | bool"]
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: Accepted clock skew of a signed GET /jobs/{id}, seconds.
JOB_STATUS_WINDOW = 300.0


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
    health: Health | None = None,
    job_secrets: Iterable[bytes] = (),
    job_paths: Iterable[str] = ("/jobs",),
    extra_routes: Iterable[BaseRoute] = (),
) -> Starlette:
    """``health``: the readiness registry /readyz reports (its ``not_ready`` parts are
    named in the body). ``ready``: extra checks asked at request time, either one callable
    returning ``{check: bool}`` or a dict of named callables returning bool.
    ``job_secrets``: keys accepted for GET /jobs/{id} (served when ``services["jobs"]``
    is given; without a key every request is refused with 403)."""
    services = services or {}
    queue = services.get("queue")
    collectors: list[Any] = []
    if queue is not None and hasattr(queue, "depth"):
        collectors.append(
            metrics.QueueDepthCollector(queue.depth, queue.dead_letter_depth)
        )
    started = time.time()

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "alive", "uptime_s": round(time.time() - started, 1)})

    def readiness() -> tuple[bool, dict[str, Any]]:
        checks = _run_checks(ready)
        not_ready = {name: "check failed" for name, passed in checks.items() if not passed}
        components: dict[str, Any] = {}
        if health is not None:
            _ok, states = health.ready()
            if not states:
                not_ready["daemon"] = "starting"
            for name, state in states.items():
                components[name] = {"ok": state.ok, "reason": state.reason, "since": round(state.since, 3)}
                if not state.ok:
                    not_ready[name] = state.reason or "not ready"
        return not not_ready, {"ready": not not_ready, "not_ready": not_ready,
                               "components": components, "checks": checks}

    async def readyz(_request: Request) -> Response:
        ok, body = await run_in_threadpool(readiness)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(_request: Request) -> Response:
        body, ctype = await run_in_threadpool(metrics.render, collectors)
        return Response(body, media_type=None, headers={"Content-Type": ctype})

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    seen = {"/healthz", "/readyz", "/metrics"}
    jobs = services.get("jobs")
    if jobs is not None:
        handler = _job_status_endpoint(jobs, list(job_secrets))
        for prefix in dict.fromkeys(p.rstrip("/") for p in job_paths):
            path = prefix + "/{job_id}"
            routes.append(Route(path, handler, methods=["GET"]))
            seen.add(path)
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


def _job_status_endpoint(jobs: Any, secrets: list[bytes]) -> Callable[[Request], Any]:
    """GET /jobs/{id}: signed like the DMS webhook (the signed body is ``GET <path>``)."""

    def problem(status: int, code: str, message: str) -> Response:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    async def get_job(request: Request) -> Response:
        if not secrets:
            return problem(403, "auth.not_configured",
                           "job status needs a key: set http.job_status_secret")
        path = request.url.path
        try:
            verify(request.headers, f"GET {path}".encode(), secrets, JOB_STATUS_WINDOW)
        except BadSignature as bad:
            return problem(401, bad.code, bad.message)
        job_id = request.path_params["job_id"]
        if not _JOB_ID.match(job_id):
            return problem(404, "job.unknown", "no such job")
        try:
            status = await run_in_threadpool(jobs.status, job_id)
        except FacewardenError as err:
            return problem(503, "jobs.unavailable", err.message)
        if status is None:
            return problem(404, "job.unknown", "no such job")
        return JSONResponse(status)

    return get_job


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


def listen(bind: str, port: int) -> socket.socket:
    """Binds the listening socket here, so a failure is an error we can name at once:
    ConfigError for an address we may never use (exit 78), a retryable
    ``http.port_in_use`` when another process holds the port (exit 69: worth a restart)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError("http.bind_failed", f"http.bind: cannot resolve {bind!r} ({exc})") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        import errno

        if exc.errno == errno.EADDRINUSE:
            raise FacewardenError(
                "http.port_in_use",
                f"http: {bind}:{port} is already in use by another process; stop it or "
                "choose another http.port", retryable=True) from exc
        raise ConfigError("http.bind_failed",
                          f"http: could not listen on {bind}:{port} ({exc.strerror})") from exc
    return sock


def serve_in_thread(app: Starlette, bind: str, port: int, *, timeout: float = 15.0) -> HttpHandle:
    """Starts uvicorn in a daemon thread; returns once it listens, or raises (see
    ``listen``) so the daemon fails at start-up, not later."""
    sock = listen(bind, port)
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
            server.run(sockets=[sock])
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ConfigError(
                "http.bind_failed",
                f"http: could not listen on {bind}:{port} "
                f"({failure[0] if failure else 'timed out'})",
            )
        time.sleep(0.02)
    handle = HttpHandle(server, thread)
    log.info("http.listening", url=handle.url)
    return handle
