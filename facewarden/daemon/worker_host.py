"""``facewarden worker``: a worker host, consuming the RabbitMQ job queue.

It runs N worker processes under the same pool and the same ``supervise()`` loop as
``facewarden run`` (models load once per process, a crashed process is replaced, SIGTERM
drains, start-up is all-or-nothing). A job is acked only after its result and audit record
are durable; a process that dies mid-job drops its connection, so the broker redelivers
the job to another worker.

Under systemd (``Type=notify``) it reports READY once started, pings the watchdog while
the supervisor runs, and reports STOPPING while draining. With ``http.enabled`` it serves
/healthz, /readyz (every worker has loaded its models; broker reachable) and /metrics.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from facewarden import exitcodes
from facewarden.daemon.amqp import redact_url
from facewarden.daemon.health import Health
from facewarden.daemon.supervise import StopRequest, supervise
from facewarden.errors import ConfigError

log = structlog.get_logger("facewarden.worker_host")


class WorkerHost:
    name = "worker_host"

    def __init__(self, settings: Any, concurrency: int | None = None, *, health: Health | None = None):
        self.settings = settings
        self.count = concurrency or settings.workers.resolved_count()
        self.health = health or Health()
        self.queue: Any = None
        self.pool: Any = None
        self.http: Any = None
        self._stopped = False

    def start(self, stop: StopRequest) -> None:
        from facewarden.daemon import metrics
        from facewarden.daemon.pool import WorkerPool
        from facewarden.daemon.preflight import check_models, wait_for_broker
        from facewarden.daemon.queues.rabbitmq import RabbitMQQueue

        settings = self.settings
        self.health.set("worker_host", False, "starting")
        if settings.queue.backend != "rabbitmq":
            raise ConfigError(
                "config.invalid",
                "queue.backend: `facewarden worker` consumes RabbitMQ; set "
                'queue.backend = "rabbitmq" (with the embedded queue, `facewarden run` '
                "runs the workers itself)",
            )
        check_models(settings.models_dir)  # jobs may ask for any handler: every model
        state_dir = Path(settings.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.queue = RabbitMQQueue(settings.queue.rabbitmq, state_dir=state_dir)
        if settings.http.enabled:
            from facewarden.daemon.http import build_app, serve_in_thread

            app = build_app(settings, services={"queue": self.queue}, health=self.health,
                            ready={"queue": self.queue.reachable})
            self.http = serve_in_thread(app, settings.http.bind, settings.http.port)
        wait_for_broker(self.queue, settings.queue.rabbitmq, lambda: stop.requested)
        if stop.requested:
            return
        metrics.configure(state_dir, fresh=True)  # before the pool spawns processes
        self.pool = WorkerPool(settings, self.queue, self.count, health=self.health,
                               stopping=lambda: stop.requested)
        self.pool.start()
        self.health.set("worker_host", True)
        log.info("worker_host.started", workers=self.count, queue=settings.queue.rabbitmq.queue,
                 broker=redact_url(settings.queue.rabbitmq.url))

    def tick(self) -> int | None:
        if self.pool is not None and self.pool.fatal:
            log.error("worker_host.fatal", reason=self.pool.fatal)
            return exitcodes.EX_CONFIG
        return None

    def status(self) -> str:
        ready = self.pool.ready_count() if self.pool is not None else 0
        return f"{ready}/{self.count} worker processes ready"

    def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.health.set("worker_host", False, "stopping")
        if self.pool is not None:
            self.pool.stop(grace)
        if self.http is not None:
            self.http.stop()
        if self.queue is not None:
            self.queue.close()
        log.info("worker_host.stopped")


def run_worker_host(settings: Any, concurrency: int | None = None,
                    stop: threading.Event | StopRequest | None = None) -> int:
    """The body of ``facewarden worker``; returns the exit code. ``stop`` (a
    threading.Event or a StopRequest) lets tests and embedders end it without a signal."""
    request = stop if isinstance(stop, StopRequest) else StopRequest()
    if isinstance(stop, threading.Event):
        event = stop

        def relay() -> None:
            event.wait()
            request.request()

        threading.Thread(target=relay, name="stop-relay", daemon=True).start()
    in_main = threading.current_thread() is threading.main_thread()
    return supervise(WorkerHost(settings, concurrency), request, keep_handlers=in_main)
