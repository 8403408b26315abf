"""Keeps readiness honest about the services the daemon depends on: stores and the broker.

Workers learn about an outage from failed jobs, but they live in other processes (or on
other hosts), and an idle daemon makes no calls at all. So the daemon probes each store
(``Store.probe``: a stat of the folder, a HEAD of the bucket) and the queue (one round
trip to the broker, or a read of the embedded queue's file) every ``interval`` seconds, each in its own
thread with a hard ``timeout``: a refused, reset or stalled service is "down" within
``interval + timeout`` seconds, and "up" again within ``interval`` of answering.

It reports into ``Health`` (``store:<name>``, ``queue``), logs once per flip
(``service.down`` / ``service.up`` with how long it was down and how many jobs waited),
and calls ``on_recover(component)`` when a component comes (back) up, which re-drives
jobs quarantined for an outage.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from facewarden.daemon import metrics
from facewarden.daemon.health import Health
from facewarden.errors import FacewardenError

log = structlog.get_logger("facewarden.monitor")

PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0


def store_probe(store: Any, timeout: float = PROBE_TIMEOUT) -> Callable[[], None]:
    probe = getattr(store, "probe", None)
    if probe is None:
        return lambda: None
    make_client = getattr(store, "probe_client", None)
    if make_client is None:
        return probe
    holder: dict[str, Any] = {}

    def run() -> None:
        if "client" not in holder:
            holder["client"] = make_client(timeout)
        probe(holder["client"])

    return run


def amqp_probe(url: str, timeout: float = PROBE_TIMEOUT) -> Callable[[], None]:
    """One round trip (a passive declare of ``amq.direct``) on the probe's own long-lived
    connection: never blocked by the publisher's connection, and no connect/close per
    probe (the broker logs each of those). A refused or reset broker fails the call; a
    stalled one never answers and the monitor's timeout reports it."""
    import pika

    from facewarden.daemon.amqp import open_connection

    state: dict[str, Any] = {}

    def drop() -> None:
        conn = state.pop("conn", None)
        state.pop("ch", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def run() -> None:
        try:
            if "ch" not in state or not state["conn"].is_open or not state["ch"].is_open:
                drop()
                params = pika.URLParameters(url)
                params.socket_timeout = timeout
                params.stack_timeout = timeout * 2
                params.blocked_connection_timeout = timeout
                params.connection_attempts = 1
                params.heartbeat = 10
                params.client_properties = {"connection_name": "facewarden readiness probe"}
                state["conn"] = open_connection(params)
                state["ch"] = state["conn"].channel()
            state["ch"].exchange_declare("amq.direct", passive=True)
        except BaseException:
            drop()
            raise

    return run


def queue_probe(settings: Any, queue: Any) -> Callable[[], None]:
    if settings.queue.backend == "rabbitmq":
        return amqp_probe(settings.queue.rabbitmq.url)
    return lambda: queue.depth()


class _Component:
    def __init__(self, name: str, probe: Callable[[], None]):
        self.name = name
        self.probe = probe
        self.inflight: threading.Thread | None = None
        self.result: tuple[bool, str | None] | None = None
        self.down_since: float | None = None
        self.was_up: bool | None = None
        self.most_waiting = 0


class ServiceMonitor:
    def __init__(self, health: Health, probes: dict[str, Callable[[], None]], *,
                 on_recover: Callable[[str], None] | None = None,
                 backlog: Callable[[], int] | None = None,
                 interval: float = PROBE_INTERVAL, timeout: float = PROBE_TIMEOUT):
        self.health = health
        self.components = [_Component(name, fn) for name, fn in probes.items()]
        self.on_recover = on_recover
        self.backlog = backlog
        self.interval, self.timeout = interval, timeout
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backlog_lock = threading.Lock()
        self._backlog_thread: threading.Thread | None = None
        self._last_backlog: int | None = None

    @classmethod
    def for_daemon(cls, settings: Any, stores: dict[str, Any], queue: Any, health: Health,
                   **kw: Any) -> ServiceMonitor:
        probes = {f"store:{name}": store_probe(store) for name, store in stores.items()}
        probes["queue"] = queue_probe(settings, queue)
        return cls(health, probes, **kw)

    def start(self) -> ServiceMonitor:
        for comp in self.components:
            t = threading.Thread(target=self._loop, args=(comp,), name=f"probe-{comp.name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 1)

    def check_now(self) -> None:
        """One synchronous round (tests, start-up)."""
        for comp in self.components:
            self._check(comp)

    # -- internals -------------------------------------------------------------------
    def _loop(self, comp: _Component) -> None:
        while not self._stop.is_set():
            self._check(comp)
            self._stop.wait(self.interval)

    def _check(self, comp: _Component) -> None:
        if comp.inflight is None or not comp.inflight.is_alive():
            comp.result = None
            comp.inflight = threading.Thread(target=self._run_probe, args=(comp,),
                                             name=f"probe-call-{comp.name}", daemon=True)
            comp.inflight.start()
        comp.inflight.join(self.timeout)
        result = comp.result
        if result is None:  # still running: a stalled service
            result = (False, f"no answer within {self.timeout:.0f} s")
        self._report(comp, *result)

    def _run_probe(self, comp: _Component) -> None:
        try:
            comp.probe()
            comp.result = (True, None)
        except FacewardenError as err:
            comp.result = (False, f"{err.code}: {err.message}"[:300])
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "down"
            comp.result = (False, f"{type(exc).__name__}: {exc}"[:300])

    def _report(self, comp: _Component, ok: bool, reason: str | None) -> None:
        self.health.set(comp.name, ok, reason)
        label = comp.name.removeprefix("store:")
        with contextlib.suppress(Exception):
            metrics.STORE_UP.labels(store=label).set(1 if ok else 0)
        if ok and comp.was_up is not True:
            recovered = comp.was_up is False
            down_for = time.monotonic() - comp.down_since if comp.down_since else 0.0
            comp.was_up, comp.down_since = True, None
            if recovered:
                waited = max(comp.most_waiting, self._backlog() or 0)
                log.info("service.up", component=comp.name, down_s=round(down_for, 1), jobs_waited=waited)
                with contextlib.suppress(Exception):
                    metrics.STORE_BACKLOG.labels(store=label).set(0)
            if self.on_recover is not None:
                try:
                    self.on_recover(comp.name)
                except Exception as exc:  # noqa: BLE001 - a failed re-drive is retried next flip
                    log.error("service.recover_failed", component=comp.name, error=type(exc).__name__,
                              detail=str(exc)[:200])
        elif not ok and comp.was_up is not False:
            comp.was_up, comp.down_since, comp.most_waiting = False, time.monotonic(), 0
            log.warning("service.down", component=comp.name, reason=reason, jobs_waiting=self._backlog())
        if not ok:
            waiting = self._backlog() or 0
            comp.most_waiting = max(comp.most_waiting, waiting)
            with contextlib.suppress(Exception):
                metrics.STORE_BACKLOG.labels(store=label).set(waiting)

    def _backlog(self) -> int | None:
        """Queue depth, without ever hanging a probe thread on a broker that is away:
        one read at a time, only while the queue answers, else the last value seen."""
        if self.backlog is None:
            return None
        queue_state = self.health.snapshot().get("queue")
        if queue_state is not None and not queue_state.ok:
            return self._last_backlog
        with self._backlog_lock:
            if self._backlog_thread is None or not self._backlog_thread.is_alive():
                def read() -> None:
                    with contextlib.suppress(Exception):
                        self._last_backlog = int(self.backlog())  # type: ignore[misc]

                self._backlog_thread = threading.Thread(target=read, name="backlog", daemon=True)
                self._backlog_thread.start()
            thread = self._backlog_thread
        thread.join(0.5)
        return self._last_backlog
