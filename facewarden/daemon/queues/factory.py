"""Opening the configured queue backend: switching is one config line."""

from __future__ import annotations

from pathlib import Path

from facewarden.config.schema import Settings
from facewarden.daemon.queues.base import Queue


def open_queue(settings: Settings) -> Queue:
    if settings.queue.backend == "rabbitmq":
        from facewarden.daemon.queues.rabbitmq import RabbitMQQueue

        return RabbitMQQueue(settings.queue.rabbitmq, state_dir=Path(settings.state_dir))
    from facewarden.daemon.queues.sqlite import SqliteQueue

    return SqliteQueue(Path(settings.state_dir) / "queue.db")
