"""The daemon: sources -> routes -> queue -> worker processes, plus HTTP and housekeeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from facewarden import exitcodes
from facewarden.config.schema import Settings
from facewarden.daemon.health import Health
from facewarden.daemon.jobs import Event
from facewarden.daemon.pool import WorkerPool
from facewarden.daemon.preflight import check_models, wait_for_broker
from facewarden.daemon.queues.factory import open_queue
from facewarden.daemon.routing import Router
from facewarden.daemon.sources import Source, SourceContext, build_source
from facewarden.daemon.supervise import START_FAILURE_GRACE, StopRequest, supervise
from facewarden.errors import ConfigError, FacewardenError
from facewarden.storage.audit import AuditLog
from facewarden.storage.stores import open_stores
from facewarden.video.progress import read_progress

log = structlog.get_logger("facewarden.daemon")


class JobStatus:
    """Answers "where is job X?" from the queue and the audit index (for GET /jobs/{id})."""

    def __init__(self, queue: Any, audit: AuditLog, state_dir: Path | None = None):
        self.queue, self.audit = queue, audit
        self.state_dir = state_dir

    def status(self, job_id: str) -> dict[str, Any] | None:
        record = self.audit.find_job(job_id)
        if record is not None:
            return {"id": job_id, "state": "done", "outcome": record.get("outcome"),
                    "reason": record.get("reason"),
                    "outputs": [{"store": o["store"], "key": o["key"], "sha256": o["sha256"]}
                                for o in record.get("outputs", [])],
                    "audit": {"seq": record["seq"], "hash": record["hash"]}}
        state = self.queue.job_state(job_id)
        if state is not None:
            answer: dict[str, Any] = {"id": job_id, "state": "running" if state == "leased" else "queued"}
            progress = read_progress(self.state_dir, job_id) if self.state_dir is not None else None
            if progress is not None and state == "leased":  # videos: phase, frames_done, frames_total
                answer["progress"] = {k: progress[k] for k in ("phase", "frames_done", "frames_total")}
            return answer
        return None


class Daemon:
    """The daemon as ``supervise()`` runs it (see supervise.py for the lifecycle rules).

    Embedders and tests may also call ``start()`` and ``stop()`` directly: ``start()``
    raises after undoing a partial start.
    """

    name = "daemon"

    def __init__(self, settings: Settings, *, workers: int | None = None, health: Health | None = None):
        self.settings = settings
        self.health = health or Health()
        #: `--workers N` from the command line; 0 = no local workers (worker hosts do it).
        self.workers_override: int | None = workers
        self.stores: dict[str, Any] = {}
        self.audit: AuditLog | None = None
        self.queue: Any = None
        self.router: Router | None = None
        self.services: dict[str, Any] = {"health": self.health, "emit": self.emit}
        self.monitor: Any = None
        self.sources: list[Source] = []
        self._started_sources: list[Source] = []
        self.pool: WorkerPool | None = None
        self.http: Any = None
        self._emit_lock = threading.Lock()
        self._stop = threading.Event()  # set by stop() (never from a signal handler)
        self._stop_request: StopRequest | None = None
        self._stopped = False

    def _check_routes(self) -> None:
        from facewarden.handlers.video import handler_for

        for i, route in enumerate(self.settings.routes):
            try:
                handler_for(route.handler, route.media).validate_params(route.params)
            except FacewardenError as err:
                raise ConfigError("config.invalid", f"routes[{i}]: {err.message}") from err

    def emit(self, event: Event) -> str | None:
        """Thread-safe; returns once the job is durable in the queue (or was a repeat)."""
        assert self.router is not None and self.queue is not None, "emit before start"
        job = self.router.route(event)
        if job is None:
            return None
        dedup = f"{event.store}\x00{event.key}\x00{event.version}" if event.version else None
        with self._emit_lock:
            accepted = self.queue.put(job, dedup=dedup)
        if accepted:
            log.info("job.queued", job_id=job.id, source=event.source, store=job.store, key=job.key,
                     handler=job.handler)
        return job.id if accepted else None

    def worker_count(self) -> int:
        if self.workers_override is not None:  # `--workers 0`: dedicated worker hosts do the work
            return self.workers_override
        return self.settings.workers.resolved_count()

    def start(self, stop: StopRequest | None = None) -> None:
        """Cheap, fallible steps first (routes, models, stores, sources, HTTP port, broker),
        the worker processes after them, the sources' watching last. On any failure
        everything already started is stopped again and the error is raised."""
        self._stop_request = stop
        stopping = (lambda: stop.requested) if stop is not None else (lambda: False)
        self.health.set("daemon", False, "starting")
        try:
            self._start(stopping)
        except BaseException:
            self.stop(grace=START_FAILURE_GRACE)
            raise

    def _start(self, stopping: Callable[[], bool]) -> None:
        settings = self.settings
        count = self.worker_count()
        self._check_routes()
        if settings.routes and count > 0:
            check_models(settings.models_dir)
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        self.stores = open_stores(settings.all_stores())
        self.audit = AuditLog(settings.state_dir)
        self.queue = open_queue(settings)
        self.router = Router(settings)
        self.services.update(audit=self.audit, queue=self.queue,
                             jobs=JobStatus(self.queue, self.audit, Path(settings.state_dir)))
        ctx = SourceContext(stores=self.stores, settings=settings, services=self.services)
        self.sources = [build_source(cfg, ctx) for cfg in settings.sources]
        if settings.http.enabled:
            from facewarden.daemon.http import build_app, serve_in_thread

            # No request-time queue check: the service monitor reports "queue" into Health
            # every second with a hard timeout, so /readyz never waits on a stalled broker.
            app = build_app(settings, sources=self.sources, services=self.services, health=self.health,
                            job_secrets=job_status_secrets(settings, self.sources),
                            job_paths=job_status_paths(self.sources),
                            extra_routes=self._web_routes())
            self.http = serve_in_thread(app, settings.http.bind, settings.http.port)
        if settings.queue.backend == "rabbitmq":
            wait_for_broker(self.queue, settings.queue.rabbitmq, stopping)
        if stopping():
            return
        n = self.queue.release_all(reason={"code": "daemon.restarted",
                                           "message": "the daemon restarted while the job was in progress"})
        if n:
            log.warning("jobs.recovered", jobs=n)
        from facewarden.daemon import metrics

        metrics.configure(settings.state_dir, fresh=True)  # before worker processes spawn
        if count > 0:
            self.pool = WorkerPool(settings, self.queue, count, health=self.health, stopping=stopping)
            self.pool.start()
        for source in self.sources:
            if stopping():
                return
            self.health.watch(f"source:{source.name}", source.ready,
                              "not connected or not watching yet")
            self._started_sources.append(source)
            source.start(self.emit)
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        self._start_monitor()
        self.health.set("daemon", True)
        log.info("daemon.started", sources=[s.name for s in self.sources], workers=count,
                 queue=settings.queue.backend)

    def _web_routes(self) -> list[Any]:
        """The API and console (facewarden/web), unless ``http.api = false``."""
        if not self.settings.http.api:
            return []
        from facewarden.web import routes

        return routes(self.settings, stores=self.stores, audit=self.audit, queue=self.queue)

    def _start_monitor(self) -> None:
        """Probes stores and broker for /readyz; re-drives outage quarantines on recovery."""
        from facewarden.daemon.monitor import ServiceMonitor
        from facewarden.daemon.redrive import redrive

        def is_up(store: str) -> bool:
            state = self.health.snapshot().get(f"store:{store}")
            return state is None or state.ok

        def on_recover(component: str) -> None:
            if component.startswith("store:"):
                redrive(self.settings, self.audit, self.queue, self.stores, is_up=is_up, router=self.router)

        self.monitor = ServiceMonitor.for_daemon(self.settings, self.stores, self.queue, self.health,
                                                 on_recover=on_recover, backlog=self.queue.depth).start()

    def ready(self) -> dict[str, bool]:
        """Each component's readiness (the same facts /readyz reports)."""
        _ok, states = self.health.ready()
        return {name: state.ok for name, state in states.items()}

    def tick(self) -> int | None:
        if self.pool is not None and self.pool.fatal:
            log.error("daemon.fatal", reason=self.pool.fatal)
            return exitcodes.EX_CONFIG
        return None

    def status(self) -> str:
        if self.pool is None:
            return f"{len(self.sources)} sources, no local workers"
        return f"{len(self.sources)} sources, {self.pool.ready_count()}/{self.pool.count} workers ready"

    def _housekeeping(self) -> None:
        """Purges gallery subjects past their retention date, at start and every interval."""
        gallery = None
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.settings.gallery.purge_interval
            if gallery is None:
                from facewarden.storage.gallery import gallery_configured, open_configured

                if not gallery_configured(self.settings):
                    continue  # no one enrolled yet
                try:
                    gallery = open_configured(self.settings)
                except Exception as exc:  # noqa: BLE001 - housekeeping must not stop the daemon
                    log.error("gallery.open_failed", error=type(exc).__name__)
                    continue
            try:
                purged = gallery.purge_expired(time.time())
                for subject in purged:
                    assert self.audit is not None
                    self.audit.append({"kind": "subject.purged", "subject": subject,
                                       "reason": {"code": "retention.expired",
                                                  "message": "retention period ended"}})
            except Exception as exc:
                log.error("gallery.purge_failed", error=type(exc).__name__)

    def stop(self, grace: float | None = None) -> None:
        """Tells the pool first (so no worker exiting with us is replaced), stops the
        sources (no new jobs), drains the workers, then closes HTTP and the queue.
        Safe after a partial start and when called twice."""
        if self._stopped:
            return
        self._stopped = True
        self.health.set("daemon", False, "stopping")
        if self.pool is not None:
            self.pool.begin_stop()
        self._stop.set()
        if self.monitor is not None:
            self.monitor.stop()
        for source in reversed(self._started_sources):
            try:
                source.stop()
            except Exception as exc:
                log.error("source.stop_failed", source=source.name, error=type(exc).__name__)
        if self.pool is not None:
            self.pool.stop(grace)
        if self.http is not None:
            self.http.stop()
        if self.queue is not None:
            self.queue.close()
        log.info("daemon.stopped")

    def run_forever(self) -> int:
        """Runs under ``supervise()`` until SIGTERM/SIGINT; returns the exit code."""
        return supervise(self)


def run_daemon(settings: Settings, *, workers: int | None = None) -> int:
    """The body of ``facewarden run``: returns the process exit code."""
    return supervise(Daemon(settings, workers=workers), keep_handlers=True)


def job_status_secrets(settings: Settings, sources: list[Any]) -> list[bytes]:
    """Keys GET /jobs/{id} accepts: ``http.job_status_secret`` and, so a DMS that already
    signs its status requests keeps working, the secret of every dms-webhook source."""
    from facewarden.daemon.sources.dms_webhook import DmsWebhookSource

    secrets: list[bytes] = []
    own = settings.http.job_status_secret
    if own is not None:
        secrets.append(own.get_secret_value().encode())
    secrets += [s.job_status_secret for s in sources if isinstance(s, DmsWebhookSource)]
    return secrets


def job_status_paths(sources: list[Any]) -> list[str]:
    """``/jobs`` plus any other ``jobs_path`` a dms-webhook source hands out in status_url."""
    from facewarden.daemon.sources.dms_webhook import DmsWebhookSource

    return ["/jobs", *(s.opts.jobs_path for s in sources if isinstance(s, DmsWebhookSource))]


