"""The daemon: sources -> routes -> queue -> worker processes, plus HTTP and housekeeping."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from facewarden.config.schema import Settings
from facewarden.daemon.jobs import Event
from facewarden.daemon.pool import WorkerPool
from facewarden.daemon.queues.factory import open_queue
from facewarden.daemon.routing import Router
from facewarden.daemon.sources import Source, SourceContext, build_source
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
        state = getattr(self.queue, "job_state", lambda _id: None)(job_id)
        if state is not None:
            answer: dict[str, Any] = {"id": job_id, "state": "running" if state == "leased" else "queued"}
            progress = read_progress(self.state_dir, job_id) if self.state_dir is not None else None
            if progress is not None and state == "leased":  # videos: phase, frames_done, frames_total
                answer["progress"] = {k: progress[k] for k in ("phase", "frames_done", "frames_total")}
            return answer
        return None


class Daemon:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.stores = open_stores(settings.all_stores())
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog(settings.state_dir)
        self.queue = open_queue(settings)
        self.router = Router(settings)
        self.services: dict[str, Any] = {"audit": self.audit, "queue": self.queue,
                                         "jobs": JobStatus(self.queue, self.audit, Path(settings.state_dir)),
                                         "emit": self.emit}
        self.sources: list[Source] = []
        self.pool: WorkerPool | None = None
        self.http: Any = None
        self._emit_lock = threading.Lock()
        self._stop = threading.Event()
        #: `--workers N` from the command line; 0 = no local workers (worker hosts do it).
        self.workers_override: int | None = None
        self._check_routes()

    def _check_routes(self) -> None:
        from facewarden.handlers.video import handler_for

        for i, route in enumerate(self.settings.routes):
            try:
                handler_for(route.handler, route.media).validate_params(route.params)
            except FacewardenError as err:
                raise ConfigError("config.invalid", f"routes[{i}]: {err.message}") from err

    def emit(self, event: Event) -> str | None:
        """Thread-safe; returns once the job is durable in the queue (or was a repeat)."""
        job = self.router.route(event)
        if job is None:
            return None
        dedup = f"{event.store}\x00{event.key}\x00{event.version}" if event.version else None
        with self._emit_lock:
            accepted = self.queue.put(job, dedup=dedup)
        if accepted:
            log.info("job.queued", job_id=job.id, source=event.source, handler=job.handler)
        return job.id if accepted else None

    def start(self) -> None:
        release_all = getattr(self.queue, "release_all", None)
        if release_all is not None:
            n = release_all(reason={"code": "daemon.restarted",
                                    "message": "the daemon restarted while the job was in progress"})
            if n:
                log.warning("jobs.recovered", jobs=n)
        count = self.settings.workers.resolved_count()
        if self.workers_override is not None:  # `--workers 0`: dedicated worker hosts do the work
            count = self.workers_override
        from facewarden.daemon import metrics

        metrics.configure(self.settings.state_dir, fresh=True)  # before worker processes spawn
        if count > 0:
            self.pool = WorkerPool(self.settings, self.queue, count)
            self.pool.start()
        ctx = SourceContext(stores=self.stores, settings=self.settings, services=self.services)
        self.sources = [build_source(cfg, ctx) for cfg in self.settings.sources]
        for source in self.sources:
            source.start(self.emit)
        if self.settings.http.enabled:
            from facewarden.daemon.http import build_app, serve_in_thread

            app = build_app(self.settings, sources=self.sources, services=self.services,
                            ready=self.ready)
            self.http = serve_in_thread(app, self.settings.http.bind, self.settings.http.port)
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        log.info("daemon.started", sources=[s.name for s in self.sources], workers=count,
                 queue=self.settings.queue.backend)

    def ready(self) -> dict[str, bool]:
        return {"sources": all(s.ready() for s in self.sources),
                "workers": self.pool is None or self.pool.alive() > 0,
                "queue": _queue_ok(self.queue)}

    def _housekeeping(self) -> None:
        """Purges gallery subjects past their retention date, at start and every interval."""
        gallery = None
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.settings.gallery.purge_interval
            if gallery is None:
                if not (Path(self.settings.state_dir) / "gallery.db").exists():
                    continue  # no one enrolled yet
                from facewarden.storage.gallery import open_gallery

                try:
                    gallery = open_gallery(Path(self.settings.state_dir), self.settings.gallery.key_file)
                except Exception as exc:  # noqa: BLE001 - housekeeping must not stop the daemon
                    log.error("gallery.open_failed", error=type(exc).__name__)
                    continue
            try:
                purged = gallery.purge_expired(time.time())
                for subject in purged:
                    self.audit.append({"kind": "subject.purged", "subject": subject,
                                       "reason": {"code": "retention.expired",
                                                  "message": "retention period ended"}})
            except Exception as exc:
                log.error("gallery.purge_failed", error=type(exc).__name__)

    def stop(self) -> None:
        """Stops sources first (no new jobs), then drains the workers."""
        self._stop.set()
        for source in self.sources:
            try:
                source.stop()
            except Exception as exc:
                log.error("source.stop_failed", source=source.name, error=type(exc).__name__)
        if self.pool is not None:
            self.pool.stop()
        if self.http is not None:
            self.http.stop()
        self.queue.close()
        log.info("daemon.stopped")

    def run_forever(self) -> int:
        received: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            # Only flags here: logging from a signal handler can deadlock on the log lock
            # the interrupted code holds.
            received.append(signum)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        _sd_notify("READY=1")
        code = 0
        while not self._stop.wait(1.0):
            _sd_notify("WATCHDOG=1")
            if self.pool is not None and self.pool.fatal:
                log.error("daemon.fatal", reason=self.pool.fatal)
                code = 78
                break
        if received:
            log.info("daemon.signal", signal=signal.Signals(received[0]).name)
        _sd_notify("STOPPING=1")
        self.stop()
        return code


def _queue_ok(queue: Any) -> bool:
    try:
        queue.depth()
        return True
    except Exception:
        return False


def _sd_notify(state: str) -> None:
    try:
        from facewarden.daemon.sdnotify import notify
    except ImportError:
        return
    notify(state)
