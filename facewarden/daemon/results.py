"""Result messages for RabbitMQ job requests (schema in docs/job-message.md).

After a job's result and audit record are durable, the worker calls
``publish_result(settings, job, summary)``. It publishes one ``facewarden.result/1``
message to the results exchange (topic, routing key = handler name) and, when the job
came with a ``reply_to``, one more straight to that queue (default exchange) carrying the
request's ``correlation_id``, RPC style.

Publishing happens after the fact: the audit record, not this message, is the truth, so a
broker outage here never fails or repeats a job. We try for ``RESULT_PUBLISH_TIMEOUT``
seconds (reconnecting), then log and give up; the requester can still ask
``GET /jobs/{id}``. A job that is redelivered after a crash may publish its result twice
(at-least-once): consumers deduplicate on ``job_id``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any

import pika
import pika.exceptions as pex
import structlog

from facewarden.daemon import amqp, metrics
from facewarden.daemon.backoff import Backoff
from facewarden.daemon.jobs import Job
from facewarden.daemon.pipeline import Outcome

log = structlog.get_logger("facewarden.results")

RESULT_SCHEMA = "facewarden.result/1"
RESULT_PUBLISH_TIMEOUT = 10.0

_lock = threading.Lock()
_conn: dict[str, Any] = {}  # url -> (pid, connection, channel, declared exchanges)


def wants_result(settings: Any, job: Job) -> bool:
    """True when the worker should call ``publish_result`` for this job."""
    cfg = settings.queue.rabbitmq
    return bool(cfg.publish_results or job.hints.get("reply_to") or job.hints.get("correlation_id"))


def result_message(job: Job, summary: Outcome | dict[str, Any]) -> dict[str, Any]:
    """The ``facewarden.result/1`` document. ``summary`` is the audit record (a dict) or a
    pipeline Outcome; only audit facts go out, never image data or embeddings."""
    if isinstance(summary, Outcome):
        record, outcome, keys = summary.record or {}, summary.outcome, summary.outputs
    else:
        record, outcome, keys = summary or {}, (summary or {}).get("outcome"), []
    outputs = record.get("outputs") or []
    out_keys = [
        {"store": o.get("store"), "key": o.get("key"), "sha256": o.get("sha256")}
        for o in outputs
        if isinstance(o, dict)
    ]
    if not out_keys and keys:
        out_keys = [{"store": job.target, "key": k} for k in keys]
    audit = {
        k: record.get(k)
        for k in ("seq", "hash", "prev", "faces", "reason", "models", "timings", "input")
        if k in record
    }
    return {
        "schema": RESULT_SCHEMA,
        "job_id": job.id,
        "correlation_id": job.hints.get("correlation_id"),
        "handler": job.handler,
        "input": {"store": job.store, "key": job.key},
        "target": job.target,
        "outcome": outcome,
        "reason": record.get("reason"),
        "outputs": out_keys,
        "audit": audit,
        "finished_at": time.time(),
    }


def _channel(url: str, exchange: str, heartbeat: int) -> Any:
    entry = _conn.get(url)
    if entry is not None:
        pid, conn, ch, declared = entry
        if pid == os.getpid() and conn.is_open and ch.is_open:
            if exchange not in declared:
                ch.exchange_declare(exchange, "topic", durable=True)
                declared.add(exchange)
            return ch
        if pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()
    conn = amqp.connect(url, heartbeat=heartbeat, role="results")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare(exchange, "topic", durable=True)
    _conn[url] = (os.getpid(), conn, ch, {exchange})
    return ch


def publish_result(settings: Any, job: Job, summary: Outcome | dict[str, Any]) -> bool:
    """Publishes the result; returns False (and logs) when the broker stayed unreachable."""
    cfg = settings.queue.rabbitmq
    doc = result_message(job, summary)
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    corr = job.hints.get("correlation_id")
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        correlation_id=str(corr) if corr else None,
        message_id=job.id,
        type=RESULT_SCHEMA,
        timestamp=int(time.time()),
    )
    reply_to = job.hints.get("reply_to")
    deadline = time.monotonic() + RESULT_PUBLISH_TIMEOUT
    backoff = Backoff(base=0.2, cap=2.0)
    with _lock:
        while True:
            try:
                ch = _channel(cfg.url, cfg.results_exchange, cfg.heartbeat)
                ch.basic_publish(cfg.results_exchange, job.handler, body, props)
                if reply_to:
                    try:
                        ch.basic_publish("", str(reply_to), body, props, mandatory=True)
                    except pex.UnroutableError:
                        log.warning("result.reply_to_missing", job_id=job.id, reply_to=reply_to)
                metrics.RESULTS_PUBLISHED.labels(handler=job.handler).inc()
                return True
            except (pex.AMQPError, OSError) as exc:
                _conn.pop(cfg.url, None)
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    log.error("result.publish_failed", job_id=job.id, error=type(exc).__name__)
                    return False
                time.sleep(delay)


def close() -> None:
    """Closes this process's result connections (worker shutdown)."""
    with _lock:
        for pid, conn, _ch, _declared in list(_conn.values()):
            if pid == os.getpid():
                with contextlib.suppress(Exception):
                    conn.close()
        _conn.clear()
