"""``facewarden worker``: the command line of a worker host (facewarden/daemon/worker_host.py
has the host itself: the same pool and ``supervise()`` loop as ``facewarden run``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facewarden.cli.common import fail
from facewarden.daemon.worker_host import run_worker_host
from facewarden.errors import FacewardenError

__all__ = ["run_worker_host", "worker"]


@click.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help='Settings file (TOML); the worker needs queue.backend = "rabbitmq".',
)
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (dedup cache, metrics, local stores).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the installed model files are.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Worker processes on this host (default: workers.count, 0 there = one per core).",
)
def worker(
    config: Path | None, state: Path | None, models_dir: Path | None, concurrency: int | None
) -> None:
    """Consume jobs from RabbitMQ and process them (run on any number of hosts)."""
    from facewarden.config import settings_from_flags
    from facewarden.daemon.logs import configure_logging

    try:
        settings = settings_from_flags(config, state=state, models_dir=models_dir)
        configure_logging(settings.log.format, settings.log.level)
    except FacewardenError as err:
        fail(err)
    sys.exit(run_worker_host(settings, concurrency))
