"""Prometheus metrics shared by the daemon, its worker processes and `facewarden worker`.

Worker processes are separate processes, so counters they bump must reach the daemon's
``/metrics``. We use prometheus_client's multiprocess mode: every process writes its
values to mmap files in ``STATE/metrics`` and the scrape sums them. Rules:

1. The process that owns the state dir calls ``configure(state_dir, fresh=True)`` once,
   BEFORE it starts worker processes (it exports ``PROMETHEUS_MULTIPROC_DIR``, which
   spawned children inherit, and wipes files of an earlier run).
2. Everyone else just uses the metrics: ``from facewarden.daemon import metrics`` then
   ``metrics.JOBS.labels(handler="anonymize", outcome="ok").inc()``. Metric objects are
   created on first attribute access (after ``configure``), never at import time, so
   always go through the module attribute, never ``from ... import JOBS`` at import time.
3. When a worker process exits, its supervisor (pool.WorkerPool) calls
   ``process_exited(pid)`` so that live-only gauges forget it.

Queue depth is read at scrape time from a callable (``QueueDepthCollector``), not stored.
Without ``configure`` everything works in plain single-process mode (tests, one-shot CLI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

_DEFS: dict[str, tuple[type, str, str, tuple[str, ...], dict[str, Any]]] = {
    "JOBS": (
        Counter,
        "facewarden_jobs",
        "Jobs finished, by handler and outcome (ok, rejected, quarantined, duplicate).",
        ("handler", "outcome"),
        {},
    ),
    "JOB_SECONDS": (
        Histogram,
        "facewarden_job_seconds",
        "Time a worker spent on one job.",
        ("handler",),
        {"buckets": LATENCY_BUCKETS},
    ),
    "EVENT_TO_RESULT_SECONDS": (
        Histogram,
        "facewarden_event_to_result_seconds",
        "From the source noticing the object to the result being durable.",
        ("handler",),
        {"buckets": LATENCY_BUCKETS},
    ),
    "RETRIES": (
        Counter,
        "facewarden_retries",
        "Jobs given back for another attempt.",
        ("reason",),
        {},
    ),
    "DEAD_LETTERS": (
        Counter,
        "facewarden_dead_letters",
        "Jobs and messages moved to a dead-letter queue.",
        ("reason",),
        {},
    ),
    "EVENTS": (Counter, "facewarden_events", "Events emitted by sources.", ("source",), {}),
    "SOURCE_LAG_SECONDS": (
        Gauge,
        "facewarden_source_lag_seconds",
        "Age of the newest event a source handled when it handled it.",
        ("source",),
        {"multiprocess_mode": "livemax"},
    ),
    "WEBHOOK_REQUESTS": (
        Counter,
        "facewarden_webhook_requests",
        "Webhook requests by source and HTTP status.",
        ("source", "status"),
        {},
    ),
    "AMQP_MESSAGES": (
        Counter,
        "facewarden_amqp_job_messages",
        "RabbitMQ job messages by source and result (accepted, invalid, failed).",
        ("source", "result"),
        {},
    ),
    "STORE_BREAKER": (
        Gauge,
        "facewarden_store_breaker_state",
        "Circuit breaker per store in the worker processes: 0 closed, 1 open, 2 half-open.",
        ("store",),
        {"multiprocess_mode": "livemax"},
    ),
    "STORE_UP": (
        Gauge,
        "facewarden_store_up",
        "1 when the daemon's probe reaches the store (or broker, store=\"queue\"), else 0.",
        ("store",),
        {"multiprocess_mode": "livemax"},
    ),
    "STORE_BACKLOG": (
        Gauge,
        "facewarden_store_backlog",
        "Jobs in the queue while the store is down (waiting for it), 0 when it is up.",
        ("store",),
        {"multiprocess_mode": "livemax"},
    ),
    "REDRIVEN": (
        Counter,
        "facewarden_redriven",
        "Jobs quarantined for an outage and queued again once their store was back.",
        ("store",),
        {},
    ),
    "RESULTS_PUBLISHED": (
        Counter,
        "facewarden_results_published",
        "Result messages published to the results exchange.",
        ("handler",),
        {},
    ),
}

_lock = threading.Lock()
_made: dict[str, Any] = {}
_dir: Path | None = None


def configure(state_dir: Path | str, *, fresh: bool = False) -> Path:
    """Switches this process (and processes it spawns later) to multiprocess mode."""
    global _dir
    path = Path(state_dir) / "metrics"
    with _lock:
        if fresh and path.exists():
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        os.environ[MULTIPROC_ENV] = str(path)  # inherited by spawned worker processes
        if _dir != path:
            # A new directory (another daemon in this process, e.g. in tests): metrics made
            # for the old one would keep writing to its files, so make them afresh.
            for made in _made.values():
                with contextlib.suppress(KeyError):
                    REGISTRY.unregister(made)
            _made.clear()
            values.ValueClass = values.MultiProcessValue()
        _dir = path
    return path


def multiprocess_dir() -> Path | None:
    if _dir is not None:
        return _dir
    # A spawned worker inherits the directory from its parent through the environment.
    env = os.environ.get(MULTIPROC_ENV)
    return Path(env) if env else None


def process_exited(pid: int) -> None:
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid, str(multiprocess_dir()))


def __getattr__(name: str) -> Any:
    """Creates a metric on first use (see module docstring for why not at import)."""
    spec = _DEFS.get(name)
    if spec is None:
        raise AttributeError(name)
    with _lock:
        if name not in _made:
            cls, metric, doc, labels, kwargs = spec
            _made[name] = cls(metric, doc, labels, **kwargs)
        return _made[name]


def observe_outcome(
    handler: str, outcome: str, seconds: float | None = None, event_at: float | None = None
) -> None:
    """One call per finished job for the worker: counts it and records its latencies."""
    m = __getattr__  # module-level lazy lookup
    m("JOBS").labels(handler=handler, outcome=outcome).inc()
    if seconds is not None:
        m("JOB_SECONDS").labels(handler=handler).observe(seconds)
    if event_at:
        m("EVENT_TO_RESULT_SECONDS").labels(handler=handler).observe(
            max(0.0, time.time() - event_at)
        )


class QueueDepthCollector(Collector):
    """Reads queue depths at scrape time; a broken queue shows as a missing sample."""

    def __init__(self, depth: Callable[[], int], dead: Callable[[], int] | None = None):
        self._depth, self._dead = depth, dead

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, fn, doc in (
            ("facewarden_queue_depth", self._depth, "Jobs waiting in the queue."),
            ("facewarden_dead_letter_depth", self._dead, "Jobs waiting in the dead-letter queue."),
        ):
            if fn is None:
                continue
            try:
                value = float(fn())
            except Exception:
                continue
            yield GaugeMetricFamily(name, doc, value=value)


def render(extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The /metrics body: all processes' values (multiprocess) or this process's."""
    mdir = multiprocess_dir()
    if mdir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(mdir))
    else:
        registry = CollectorRegistry()
        for name in list(_made):
            registry.register(_made[name])
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = [
    "REGISTRY",
    "QueueDepthCollector",
    "configure",
    "observe_outcome",
    "render",
]
