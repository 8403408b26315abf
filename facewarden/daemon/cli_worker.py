"""``facewarden worker``: a worker host's process, consuming the RabbitMQ job queue.

It runs N worker processes under the same supervisor as ``facewarden run`` (WorkerPool:
models load once per process, a crashed process is replaced, SIGTERM drains) and each
process runs the same loop (worker.run_worker) over a RabbitMQQueue. A job is acked only
after its result and audit record are durable; a process that dies mid-job drops its
connection, so the broker redelivers the job to another worker.

Under systemd (``Type=notify``) it reports READY once the processes are started, pings
the watchdog while the supervisor is healthy, and reports STOPPING while draining. With
``http.enabled`` it serves /healthz, /readyz and /metrics (summed over its processes).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from facewarden import exitcodes
from facewarden.errors import ConfigError, FacewardenError


@click.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help='Settings file (TOML); the worker needs queue.backend = "rabbitmq".',
)
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (dedup cache, metrics, local stores).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the installed model files are.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Worker processes on this host (default: workers.count, 0 there = one per core).",
)
def worker(
    config: Path | None, state: Path | None, models_dir: Path | None, concurrency: int | None
) -> None:
    """Consume jobs from RabbitMQ and process them (run on any number of hosts)."""
    from facewarden.config import settings_from_flags
    from facewarden.daemon.logs import configure_logging

    try:
        settings = settings_from_flags(config, state=state, models_dir=models_dir)
        configure_logging(settings.log.format, settings.log.level)
        sys.exit(run_worker_host(settings, concurrency))
    except FacewardenError as err:
        click.echo(f"error [{err.code}]: {err.message}", err=True)
        sys.exit(exitcodes.for_error(err))


def run_worker_host(
    settings: Any, concurrency: int | None = None, stop: threading.Event | None = None
) -> int:
    """The body of ``facewarden worker``; returns the exit code. ``stop`` lets tests and
    embedders end it without a signal."""
    import structlog

    from facewarden.daemon import metrics
    from facewarden.daemon.pool import WorkerPool
    from facewarden.daemon.queues.rabbitmq import RabbitMQQueue
    from facewarden.daemon.sdnotify import notify

    log = structlog.get_logger("facewarden.worker_host")
    if settings.queue.backend != "rabbitmq":
        raise ConfigError(
            "config.invalid",
            "queue.backend: `facewarden worker` consumes RabbitMQ; set "
            'queue.backend = "rabbitmq" (with the embedded queue, `facewarden run` '
            "runs the workers itself)",
        )
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    metrics.configure(state_dir, fresh=True)  # before the pool spawns processes
    count = concurrency or settings.workers.resolved_count()
    queue = RabbitMQQueue(settings.queue.rabbitmq, state_dir=state_dir)
    if not queue.reachable():
        log.warning("worker_host.broker_unreachable", url=_redact(settings.queue.rabbitmq.url))
    stop = stop or threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        # No logging here: a signal handler that logs can deadlock on the log lock.
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    pool = WorkerPool(settings, queue, count)
    pool.start()
    http = None
    if settings.http.enabled:
        from facewarden.daemon.http import build_app, serve_in_thread

        app = build_app(
            settings,
            services={"queue": queue},
            ready={"workers": lambda: pool.alive() > 0, "queue": queue.reachable},
        )
        http = serve_in_thread(app, settings.http.bind, settings.http.port)
    notify("READY=1")
    log.info("worker_host.started", workers=count, queue=settings.queue.rabbitmq.queue)
    code = 0
    try:
        while not stop.wait(1.0):
            if pool.fatal:
                log.error("worker_host.fatal", reason=pool.fatal)
                code = 78
                break
            notify("WATCHDOG=1")
            notify(f"STATUS={pool.alive()}/{count} worker processes")
    finally:
        notify("STOPPING=1")
        pool.stop()
        if http is not None:
            http.stop()
        queue.close()
        log.info("worker_host.stopped")
    return code


def _redact(url: str) -> str:
    """Never log broker passwords."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
