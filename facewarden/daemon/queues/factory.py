"""Opening the configured queue backend: switching is one config line."""

from __future__ import annotations

from facewarden.config.schema import Settings
from facewarden.daemon.queues.base import QUEUES, Queue


def open_queue(settings: Settings) -> Queue:
    return QUEUES.get(settings.queue.backend)(settings)
