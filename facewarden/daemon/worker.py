"""The worker loop: lease a job, run it through the pipeline, ack, retry or give up.

Used by the local worker processes of ``facewarden run`` and by ``facewarden worker`` on
RabbitMQ worker hosts alike; only the queue differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from facewarden.config.schema import Settings
from facewarden.daemon import metrics, results
from facewarden.daemon.backoff import backoff_delay as backoff
from facewarden.daemon.pipeline import Outcome, Pipeline
from facewarden.daemon.queues.base import Lease, Queue
from facewarden.errors import FacewardenError, ProcessingFailed
from facewarden.storage.stores import open_stores

__all__ = ["Pipeline", "backoff", "handle_lease", "run_worker"]

log = structlog.get_logger("facewarden.worker")


def _finished(settings: Settings, lease: Lease, outcome: Outcome, started: float,
              on_outcome: Callable[[Outcome], None] | None) -> None:
    """After the ack: metrics, the result message for whoever asked, the caller's hook."""
    job = lease.job
    metrics.observe_outcome(job.handler, outcome.outcome, time.monotonic() - started, job.hints.get("event_at"))
    if not outcome.redelivered and results.wants_result(settings, job):
        results.publish_result(settings, job, outcome)
    if on_outcome is not None:
        on_outcome(outcome)


def handle_lease(pipeline: Pipeline, queue: Queue, lease: Lease, settings: Settings,
                 on_outcome: Callable[[Outcome], None] | None = None) -> Outcome | None:
    """Runs one leased job; acks only after its result and audit record are durable."""
    started = time.monotonic()
    job = lease.job
    job.attempts = lease.delivery - 1
    max_attempts = settings.workers.max_attempts
    if lease.delivery > max_attempts:
        # Delivered more often than allowed: earlier attempts crashed or hung the worker.
        err = ProcessingFailed(**_reason_kwargs(job.last_error, "attempts.exhausted",
                                                f"gave up after {max_attempts} attempts"))
        outcome = pipeline.quarantine_after_failure(job, err)
        queue.ack(lease)
        _finished(settings, lease, outcome, started, on_outcome)
        return outcome
    try:
        outcome = pipeline.process(job)
    except FacewardenError as err:
        if err.retryable and lease.delivery < max_attempts:
            delay = backoff(lease.delivery, settings.workers.backoff_base, settings.workers.backoff_max)
            log.warning("job.retry", job_id=job.id, code=err.code, reason=err.message,
                        attempt=lease.delivery, delay_s=round(delay, 2))
            queue.retry(lease, reason=err.as_dict(), delay=delay)
            metrics.RETRIES.labels(reason=err.code).inc()
            return None
        outcome = pipeline.quarantine_after_failure(job, err)
    queue.ack(lease)
    _finished(settings, lease, outcome, started, on_outcome)
    return outcome


def _reason_kwargs(last: dict[str, str] | None, code: str, message: str) -> dict[str, str]:
    if last:
        return {"code": last.get("code", code), "message": f"{last.get('message', '')} ({message})"}
    return {"code": code, "message": message}


def run_worker(settings: Settings, queue: Queue, stop: threading.Event | object, *, name: str,
               on_outcome: Callable[[Outcome], None] | None = None,
               on_ready: Callable[[], None] | None = None) -> None:
    """Loops until ``stop`` is set; a job in progress always finishes first (drain).
    ``on_ready`` is called once the models are loaded (the supervisor's readiness)."""
    pipeline = Pipeline(settings, open_stores(settings.all_stores()))
    pipeline.warm_up()
    log.info("worker.ready", worker=name)
    if on_ready is not None:
        on_ready()
    while not stop.is_set():
        lease = queue.get(name, timeout=0.5)
        if lease is None:
            continue
        try:
            handle_lease(pipeline, queue, lease, settings, on_outcome)
        except FacewardenError as err:
            # The failure path itself failed (e.g. the quarantine store is unwritable):
            # give the job back rather than lose it.
            log.error("job.failed_to_finish", job_id=lease.job.id, code=err.code, reason=err.message)
            queue.retry(lease, reason=err.as_dict(), delay=settings.workers.backoff_max)
    log.info("worker.stopped", worker=name)
