"""Per-store circuit breakers for a worker process.

Without them, a store outage turns every queued job into a quick series of failed
attempts: the backlog burns through its retries in seconds and ends in quarantine. With
them, a store that fails ``threshold`` times in a row for an infrastructure reason is
*open*: the worker stops taking jobs (sources keep queueing them) and, every
``probe_interval`` seconds, tests the store with one light call (*half-open*). The first
probe that passes closes the breaker and jobs flow again. Jobs never count against their
attempts while they wait.

The breaker is deliberately per process and per store: nothing is shared, so a worker on
another host (RabbitMQ) or a second worker finds out on its own after ``threshold``
failures, each of which is an ordinary retry, never a loss.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from facewarden.daemon import metrics
from facewarden.errors import FacewardenError

log = structlog.get_logger("facewarden.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0


class Breaker:
    def __init__(self, name: str, threshold: int = 3, probe_interval: float = PROBE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.threshold = threshold
        self.probe_interval = probe_interval
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at: float | None = None
        self.next_probe = 0.0
        self.reason: str | None = None

    def failure(self, reason: str = "") -> bool:
        """Counts an infrastructure failure; True when this one opened the breaker."""
        self.failures += 1
        self.reason = reason or self.reason
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            opened = self.state == CLOSED
            self.state = OPEN
            if opened:
                self.opened_at = self.clock()
            self.next_probe = self.clock() + self.probe_interval
            return opened
        return False

    def success(self) -> bool:
        """The store answered; True when this closed an open breaker."""
        was_open = self.state != CLOSED
        self.state, self.failures, self.opened_at, self.reason = CLOSED, 0, None, None
        return was_open

    def probe_due(self) -> bool:
        return self.state == OPEN and self.clock() >= self.next_probe

    def half_open(self) -> None:
        self.state = HALF_OPEN


class Breakers:
    """The breakers of one worker, one per configured store, opened lazily."""

    def __init__(self, stores: dict[str, Any], *, threshold: int = 3,
                 probe_interval: float = PROBE_INTERVAL, worker: str = ""):
        self.stores = stores
        self.threshold = threshold
        self.probe_interval = probe_interval
        self.worker = worker
        self._breakers: dict[str, Breaker] = {}
        self._probe_clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, store: str) -> Breaker:
        with self._lock:
            if store not in self._breakers:
                self._breakers[store] = Breaker(store, self.threshold, self.probe_interval)
            return self._breakers[store]

    def failure(self, store: str | None, err: FacewardenError) -> None:
        if not store:
            return
        breaker = self.get(store)
        if breaker.failure(err.code):
            log.warning("breaker.opened", store=store, worker=self.worker, code=err.code,
                        reason=err.message, failures=breaker.failures)
            _gauge(store, OPEN)

    def success(self, stores: Iterable[str]) -> None:
        for store in set(stores):
            breaker = self._breakers.get(store)
            if breaker is not None and breaker.state != CLOSED:
                waited = time.monotonic() - (breaker.opened_at or time.monotonic())
                breaker.success()
                log.info("breaker.closed", store=store, worker=self.worker, open_s=round(waited, 1))
                _gauge(store, CLOSED)
            elif breaker is not None:
                breaker.failures = 0

    def open_stores(self) -> list[str]:
        return [b.name for b in self._breakers.values() if b.state != CLOSED]

    def blocked(self) -> bool:
        """True while any store is down: probes the due ones first (half-open)."""
        for breaker in list(self._breakers.values()):
            if breaker.probe_due():
                breaker.half_open()
                _gauge(breaker.name, HALF_OPEN)
                try:
                    self.probe(breaker.name)
                except FacewardenError as err:
                    if err.retryable:
                        breaker.failure(err.code)
                        _gauge(breaker.name, OPEN)
                        continue
                    # The store answers, it just refuses the probe: let jobs find out.
                self.success([breaker.name])
        return bool(self.open_stores())

    def probe(self, name: str) -> None:
        store = self.stores.get(name)
        probe = getattr(store, "probe", None)
        if probe is None:
            return
        make_client = getattr(store, "probe_client", None)
        if make_client is not None:
            if name not in self._probe_clients:
                self._probe_clients[name] = make_client(PROBE_TIMEOUT)
            probe(self._probe_clients[name])
        else:
            probe()


def _gauge(store: str, state: str) -> None:
    with contextlib.suppress(Exception):  # metrics must never break job handling
        metrics.STORE_BREAKER.labels(store=store).set(STATE_VALUE[state])
