"""Sources notice objects and emit Events; one file per kind of source.

A source module registers a factory for its config ``type``; the daemon builds every
configured source through ``build_source``. Sources never read pixels.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from facewarden.daemon.jobs import Event
from facewarden.errors import UnknownBackend

#: Enqueues the event's job durably before returning; returns the job id, or None when
#: no route took the event or it was a repeat already queued.
Emit = Callable[[Event], str | None]


@runtime_checkable
class Source(Protocol):
    name: str

    def start(self, emit: Emit) -> None:
        """Begins watching in background threads; returns at once."""
        ...

    def stop(self) -> None:
        """Stops watching; returns when no more events will be emitted."""
        ...

    def ready(self) -> bool:
        """Connected and watching (for /readyz)."""
        ...


class BackgroundSource:
    """A source whose work is one loop in a background thread.

    Subclasses set ``name``, implement ``_run(emit)`` (return soon after ``_stop`` is set)
    and ``ready()``; ``join_timeout`` bounds how long ``stop`` waits for the loop.
    """

    name: str
    join_timeout: float = 30.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = False

    def start(self, emit: Emit) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(emit,), name=f"src-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout)
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    def _run(self, emit: Emit) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class SourceContext:
    """What a source may use: the named stores, the settings object, and services the
    daemon shares (e.g. the audit index for reconciliation, the queue for job messages)."""

    stores: dict[str, Any]
    settings: Any
    services: dict[str, Any] = field(default_factory=dict)


SourceFactory = Callable[[Any, SourceContext], Source]
_FACTORIES: dict[str, SourceFactory] = {}
#: Modules that register source types; imported lazily, missing ones are skipped.
BUILTIN_MODULES = ("folder", "s3_sqs", "s3_amqp", "s3_webhook", "minio_listen", "reconcile",
                   "amqp_jobs", "dms_webhook")


def register_source(type_name: str, factory: SourceFactory) -> None:
    _FACTORIES[type_name] = factory


def _load_builtin() -> None:
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(f"facewarden.daemon.sources.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"facewarden.daemon.sources.{mod}":
                raise


def build_source(cfg: Any, ctx: SourceContext) -> Source:
    """``cfg``: a validated source config from Settings (or a mapping, validated here)."""
    from facewarden.config import parse_source

    cfg = parse_source(cfg)
    _load_builtin()
    factory = _FACTORIES.get(cfg.type)
    if factory is None:
        raise UnknownBackend("source type", cfg.type, list(_FACTORIES))
    return factory(cfg, ctx)
