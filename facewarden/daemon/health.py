"""Readiness of the daemon's parts, reported by the parts themselves.

Sources, workers, queues and stores each set their own component (``source:incoming``,
``workers``, ``queue``, ``store:out``...) when they go up or down; ``/readyz`` and the
supervisor read one snapshot. Setting is cheap and thread-safe, so a store can report a
failed call from the hot path without a probe thread, and the state flips within one call
of an outage or a recovery.

A part that already knows its own state (a source's ``ready()``) can instead be
``watch``-ed: its probe is asked on every snapshot, so the answer is never stale and no
thread has to poll it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ComponentState:
    ok: bool
    reason: str | None
    since: float


Probe = Callable[[], bool]


class Health:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, ComponentState] = {}
        self._probes: dict[str, tuple[Probe, str]] = {}

    def watch(self, component: str, probe: Probe, reason: str) -> None:
        """Reports ``component`` as ``probe()`` on every snapshot (``reason`` when false;
        a probe that raises counts as not ready). Must be cheap and never block."""
        with self._lock:
            self._probes[component] = (probe, reason)

    def set(self, component: str, ok: bool, reason: str | None = None) -> bool:
        """Records the component's state; returns True when it changed (to log once per flip)."""
        with self._lock:
            old = self._states.get(component)
            if old is not None and old.ok == ok and old.reason == reason:
                return False
            since = old.since if old is not None and old.ok == ok else time.time()
            self._states[component] = ComponentState(ok, reason, since)
            return old is None or old.ok != ok

    def forget(self, component: str) -> None:
        with self._lock:
            self._states.pop(component, None)
            self._probes.pop(component, None)

    def snapshot(self) -> dict[str, ComponentState]:
        with self._lock:
            probes = dict(self._probes)
        for component, (probe, reason) in probes.items():  # outside the lock: probes may lock
            try:
                ok = bool(probe())
            except Exception as exc:  # noqa: BLE001 - a failing probe means "not ready"
                ok, reason = False, f"{reason} ({type(exc).__name__})"
            self.set(component, ok, None if ok else reason)
        with self._lock:
            return dict(self._states)

    def not_ready(self) -> dict[str, str]:
        """Every component that is not ready, with its reason (for /readyz's body)."""
        return {name: state.reason or "not ready" for name, state in self.snapshot().items()
                if not state.ok}

    def ready(self) -> tuple[bool, dict[str, ComponentState]]:
        """Ready when at least one component reported and every one is ok."""
        states = self.snapshot()
        return bool(states) and all(s.ok for s in states.values()), states
