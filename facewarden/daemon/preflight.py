"""Start-up checks that must pass before anything heavy starts (run and worker alike).

Each is cheap and fails with an error that ``supervise`` turns into one line and an exit
code: missing models are a configuration problem (78, systemd does not restart), a broker
that stays unreachable for its retry budget is a service problem (69, worth a restart).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from facewarden.daemon.amqp import redact_url
from facewarden.daemon.backoff import Backoff
from facewarden.errors import FacewardenError, ModelError

log = structlog.get_logger("facewarden.preflight")


def check_models(models_dir: Path | str) -> None:
    """Every model file present (checked once, up front, by the supervisor; each worker
    verifies the checksums of the files it loads)."""
    from facewarden.models.registry import MODELS, ModelStore, PackageFile

    store = ModelStore(Path(models_dir))
    missing = [spec.name for spec in MODELS.values()
               if not isinstance(spec.origin, PackageFile) and not store.path_of(spec).is_file()]
    if missing:
        raise ModelError("model.missing",
                         f"model file(s) {', '.join(missing)} not installed under {models_dir}: "
                         "run `facewarden models install` (with --models-dir or --config as for run)")


def wait_for_broker(queue: Any, cfg: Any, stopping: Callable[[], bool]) -> None:
    """Start-up's broker check: retries with backoff for ``publish_timeout`` seconds (the
    broker's retry budget), then fails with a retryable error (exit 69)."""
    budget = cfg.publish_timeout
    deadline = time.monotonic() + budget
    backoff = Backoff(base=0.25, cap=5.0)
    while not queue.reachable():
        if stopping():
            return
        delay = backoff.next()
        if time.monotonic() + delay > deadline:
            raise FacewardenError(
                "queue.unavailable",
                f"queue.rabbitmq: cannot reach the broker at {redact_url(cfg.url)} "
                f"(tried for {budget:.0f} s, queue.rabbitmq.publish_timeout)",
                retryable=True)
        log.warning("broker.unreachable", url=redact_url(cfg.url), retry_in=round(delay, 2))
        _sleep_unless(stopping, delay)


def _sleep_unless(stopping: Callable[[], bool], delay: float) -> None:
    end = time.monotonic() + delay
    while not stopping() and time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
