"""Reconciliation: list a watched store and emit every object that has no audit record.

Event streams lose events: the daemon was down while MinIO's listen stream ran, a
webhook delivery gave up, an SQS message expired. This source closes the gap at start-up
and then every ``interval`` seconds. It asks the audit index (``has_input(store, key,
version)``), so an object replaced by new content (new ETag) counts as unprocessed while
one already done costs nothing but a list call. Objects that are queued but not done yet
are emitted again and dropped by the queue's dedup (same store, key and version).
Works for any store with ``list()``: S3 buckets and local folders alike.
"""

from __future__ import annotations

import fnmatch
import threading
from typing import Any

import structlog

from facewarden.config.sources import ReconcileSourceConfig as ReconcileOptions
from facewarden.daemon.jobs import Event
from facewarden.daemon.sources import BackgroundSource, Emit, SourceContext, register_source
from facewarden.daemon.sources.s3_events import parse_options
from facewarden.errors import ConfigError

log = structlog.get_logger(__name__)


class ReconcileSource(BackgroundSource):
    def __init__(self, opts: ReconcileOptions, store: Any, audit: Any):
        super().__init__()
        self.name = opts.name
        self.opts = opts
        self.store = store
        self.audit = audit
        qp = str(getattr(store, "quarantine_prefix", "") or "").strip("/")
        self._skip_prefix = qp + "/" if qp else None
        #: Figures of the last pass, for logs and tests: listed, emitted, errors.
        self.last_pass: dict[str, int] = {}
        self.passes = 0
        self._pass_done = threading.Condition()

    def wait_passes(self, n: int, timeout: float) -> bool:
        """Blocks until ``n`` passes have finished (tests, and `facewarden run --once`)."""
        with self._pass_done:
            return self._pass_done.wait_for(lambda: self.passes >= n, timeout=timeout)

    def _ignored(self, key: str) -> bool:
        if self._skip_prefix and key.startswith(self._skip_prefix):
            return True
        return any(fnmatch.fnmatchcase(key, pat) for pat in self.opts.ignore)

    def run_once(self, emit: Emit) -> dict[str, int]:
        audit = self.audit  # AuditLog is thread-safe: a connection per thread
        listed = emitted = 0
        for info in self.store.list(self.opts.prefix):
            if self._stop.is_set():
                break
            listed += 1
            if self._ignored(info.key):
                continue
            if audit.has_input(self.store.name, info.key, info.version):
                continue
            emit(Event(store=self.store.name, key=info.key, source=self.name,
                       version=info.version, hints={"size": info.size, "reconcile": True}))
            emitted += 1
            if emitted >= self.opts.max_per_pass:
                log.info("source.reconcile_capped", source=self.name, emitted=emitted)
                break
        return {"listed": listed, "emitted": emitted}

    def _run(self, emit: Emit) -> None:
        try:
            self._loop(emit)
        finally:
            close = getattr(self.audit, "close", None)
            if close is not None:
                close()  # this thread's connection only

    def _loop(self, emit: Emit) -> None:
        if self._stop.wait(self.opts.initial_delay):
            return
        while not self._stop.is_set():
            try:
                figures = self.run_once(emit)
                self._ready = True
                log.info("source.reconciled", source=self.name, store=self.store.name, **figures)
            except Exception as exc:  # store or queue away: try again next pass
                self._ready = False
                figures = {"errors": 1}
                log.warning("source.reconcile_failed", source=self.name, error=type(exc).__name__,
                            detail=str(exc)[:200])
            with self._pass_done:
                self.last_pass = figures
                self.passes += 1
                self._pass_done.notify_all()
            # after a failure, retry sooner than a full interval
            wait = self.opts.interval if self._ready else min(self.opts.interval, 30.0)
            self._stop.wait(wait)


def _factory(cfg: Any, ctx: SourceContext) -> ReconcileSource:
    opts = parse_options(ReconcileOptions, cfg)
    store = ctx.stores.get(opts.store)
    if store is None:
        raise ConfigError("config.invalid", f"sources[{opts.name}].store: no store named "
                          f"{opts.store!r} (known: {sorted(ctx.stores)})")
    audit = ctx.services.get("audit")
    if audit is None or not hasattr(audit, "has_input"):
        raise ConfigError("config.invalid", f"sources[{opts.name}]: reconciliation needs the "
                          "audit index, which this process does not have")
    return ReconcileSource(opts, store, audit)


register_source("reconcile", _factory)
