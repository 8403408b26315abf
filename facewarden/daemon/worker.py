"""The worker loop: lease a job, run it through the pipeline, ack, retry or give up.

Used by the local worker processes of ``facewarden run`` and by ``facewarden worker`` on
RabbitMQ worker hosts alike; only the queue differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from facewarden.config.schema import Settings
from facewarden.daemon import metrics, results
from facewarden.daemon.backoff import backoff_delay as backoff
from facewarden.daemon.breaker import Breakers
from facewarden.daemon.pipeline import Outcome, Pipeline
from facewarden.daemon.queues.base import Lease, Queue
from facewarden.errors import FacewardenError, ProcessingFailed, is_infrastructure
from facewarden.storage.stores import open_stores

__all__ = ["Pipeline", "backoff", "handle_lease", "run_worker"]

#: Job hints that carry outage bookkeeping across retries (both queues keep hints).
HINT_OUTAGE_SINCE = "outage_since"
HINT_OUTAGE_RETRIES = "outage_retries"
#: Longest wait between two retries of a job held up by an outage. The breaker, not this
#: delay, keeps a down store from being hammered; short delays mean jobs resume promptly.
OUTAGE_DELAY_MAX = 8.0

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


def job_stores(job: Any) -> set[str]:
    """The stores a job may touch; a job succeeds only if all that it used answered."""
    stores = {job.store, job.target}
    if job.originals == "move":
        stores.add(job.processed_store)
    return stores


def handle_lease(pipeline: Pipeline, queue: Queue, lease: Lease, settings: Settings,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 breakers: Breakers | None = None) -> Outcome | None:
    """Runs one leased job; acks only after its result and audit record are durable.

    Two kinds of failure are told apart. Input-caused ones (and, after ``max_attempts``,
    processing ones such as a crashing handler) end in quarantine. Infrastructure ones (a
    store or broker down, full or slow) are retried with backoff for up to
    ``workers.retry_budget`` seconds and do not use up the job's attempts.
    """
    started = time.monotonic()
    job = lease.job
    outage_retries = int(job.hints.get(HINT_OUTAGE_RETRIES, 0) or 0)
    attempt = max(1, lease.delivery - outage_retries)  # deliveries not caused by outages
    job.attempts = attempt - 1
    max_attempts = settings.workers.max_attempts
    if attempt > max_attempts:
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
        if is_infrastructure(err):
            if breakers is not None:
                breakers.failure(err.store, err)
            since = float(job.hints.setdefault(HINT_OUTAGE_SINCE, time.time()))
            waited = time.time() - since
            if waited < settings.workers.retry_budget:
                job.hints[HINT_OUTAGE_RETRIES] = outage_retries + 1
                delay = backoff(outage_retries + 1, settings.workers.backoff_base,
                                min(OUTAGE_DELAY_MAX, settings.workers.backoff_max))
                delay = min(delay, max(0.0, settings.workers.retry_budget - waited) + 0.1)
                log.warning("job.waiting", job_id=job.id, code=err.code, store=err.store,
                            reason=err.message, retries=outage_retries + 1, delay_s=round(delay, 2))
                queue.retry(lease, reason=err.as_dict(), delay=delay)
                metrics.RETRIES.labels(reason=err.code).inc()
                return None
            err = type(err)(err.code, f"{err.message} (still failing after {waited:.0f} s of "
                            "retries; re-driven when the store is back)", store=err.store)
        elif err.retryable and attempt < max_attempts:
            delay = backoff(attempt, settings.workers.backoff_base, settings.workers.backoff_max)
            log.warning("job.retry", job_id=job.id, code=err.code, reason=err.message,
                        attempt=attempt, delay_s=round(delay, 2))
            queue.retry(lease, reason=err.as_dict(), delay=delay)
            metrics.RETRIES.labels(reason=err.code).inc()
            return None
        outcome = pipeline.quarantine_after_failure(job, err)
    else:
        if breakers is not None:
            breakers.success(job_stores(job))
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
    stores = open_stores(settings.all_stores())
    pipeline = Pipeline(settings, stores)
    pipeline.warm_up()
    breakers = Breakers(stores, threshold=settings.workers.breaker_threshold, worker=name)
    log.info("worker.ready", worker=name)
    if on_ready is not None:
        on_ready()
    queue_failures = 0
    while not stop.is_set():
        if breakers.blocked():
            # A store is down: take no job (they wait in the queue, their attempts intact)
            # until a probe says it is back.
            _pause(stop, 0.2)
            continue
        try:
            lease = queue.get(name, timeout=0.5)
            queue_failures = 0
        except FacewardenError as err:
            if not err.retryable:
                raise
            queue_failures += 1
            delay = backoff(queue_failures, settings.workers.backoff_base, OUTAGE_DELAY_MAX)
            log.warning("queue.unavailable", worker=name, code=err.code, reason=err.message,
                        retry_in=round(delay, 2))
            _pause(stop, delay)
            continue
        if lease is None:
            continue
        try:
            handle_lease(pipeline, queue, lease, settings, on_outcome, breakers)
        except FacewardenError as err:
            # The failure path itself failed (e.g. the quarantine store is unwritable):
            # give the job back rather than lose it.
            log.error("job.failed_to_finish", job_id=lease.job.id, code=err.code, reason=err.message)
            if is_infrastructure(err):
                breakers.failure(err.store, err)
            _give_back(queue, lease, err, settings)
    log.info("worker.stopped", worker=name)


def _pause(stop: Any, seconds: float) -> None:
    wait = getattr(stop, "wait", None)
    if wait is not None:
        wait(seconds)
    else:
        time.sleep(seconds)


def _give_back(queue: Queue, lease: Lease, err: FacewardenError, settings: Settings) -> None:
    """Returns a job whose outcome could not be recorded; if even that fails, the lease
    runs out on its own (broker redelivery, or the supervisor at the job timeout)."""
    try:
        queue.retry(lease, reason=err.as_dict(),
                    delay=backoff(2, settings.workers.backoff_base, OUTAGE_DELAY_MAX))
    except FacewardenError as again:
        log.error("job.give_back_failed", job_id=lease.job.id, code=again.code, reason=again.message)
