"""Readiness of the daemon's parts, reported by the parts themselves.

Sources, workers, queues and stores each set their own component (``source:incoming``,
``workers``, ``queue``, ``store:out``...) when they go up or down; ``/readyz`` and the
supervisor read one snapshot. Setting is cheap and thread-safe, so a store can report a
failed call from the hot path without a probe thread, and the state flips within one call
of an outage or a recovery.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ComponentState:
    ok: bool
    reason: str | None
    since: float


class Health:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, ComponentState] = {}

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

    def snapshot(self) -> dict[str, ComponentState]:
        with self._lock:
            return dict(self._states)

    def ready(self) -> tuple[bool, dict[str, ComponentState]]:
        """Ready when at least one component reported and every one is ok."""
        states = self.snapshot()
        return bool(states) and all(s.ok for s in states.values()), states
