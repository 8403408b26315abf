"""`facewarden process`: a batch over files and folders through the daemon's pipeline.

Same pipeline, same audit log, same quarantine; only the queue is skipped (jobs run in
order in this process) and originals are always kept.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from facewarden.config.schema import DEFAULT_IGNORE, Settings
from facewarden.daemon.jobs import Job
from facewarden.daemon.pipeline import Outcome, Pipeline
from facewarden.daemon.worker import backoff
from facewarden.errors import FacewardenError, InputRejected, UsageError
from facewarden.handlers import base as handlers
from facewarden.storage.local import LocalStore
from facewarden.storage.stores import open_stores


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not any(fnmatch.fnmatchcase(d, p) for p in DEFAULT_IGNORE))
        for fn in sorted(filenames):
            if not any(fnmatch.fnmatchcase(fn, p) for p in DEFAULT_IGNORE):
                yield Path(dirpath) / fn


def process_paths(settings: Settings, inputs: list[Path], out: Path, handler: str, params: dict[str, Any],
                  *, echo: Callable[[str], None] = print) -> int:
    """Returns the number of inputs that did not succeed."""
    try:  # bad params are the caller's mistake, not the inputs': say so once, touch nothing
        handlers.get(handler).validate_params(params)
    except InputRejected as err:
        raise UsageError(err.code, err.message) from err
    stores = open_stores(settings.all_stores())
    stores["outgoing"] = LocalStore("outgoing", out)
    jobs: list[tuple[Path, Job]] = []
    for i, path in enumerate(inputs):
        path = path.absolute()
        root = path if path.is_dir() else path.parent
        name = f"input-{i}"
        stores[name] = LocalStore(name, root)
        files = _walk(path) if path.is_dir() else [path]
        for f in files:
            try:
                key = stores[name].key_of(f)
            except FacewardenError as err:
                echo(f"{f}: rejected [{err.code}] {err.message}")
                continue
            jobs.append((f, Job(handler=handler, params=params, store=name, key=key, target="outgoing",
                                hints={"source": "cli", "event_at": time.time()})))
    pipeline = Pipeline(settings, stores)
    failures = 0
    for path, job in jobs:
        outcome = _run_with_retries(pipeline, job, settings)
        shown = repr(str(path)) if "\n" in str(path) else str(path)
        if outcome.outcome in ("ok", "duplicate"):
            faces = (outcome.record.get("facts") or {}).get("faces")
            extra = f" (faces={faces})" if faces is not None else ""
            what = "ok" if outcome.outcome == "ok" else "duplicate of an earlier record"
            echo(f"{shown}: {what} -> {', '.join(outcome.outputs) or '-'}{extra}")
        else:
            failures += 1
            reason = outcome.record.get("reason") or {}
            echo(f"{shown}: {outcome.outcome} [{reason.get('code')}] {reason.get('message')}")
    return failures


def _run_with_retries(pipeline: Pipeline, job: Job, settings: Settings) -> Outcome:
    for attempt in range(1, settings.workers.max_attempts + 1):
        job.attempts = attempt - 1
        try:
            return pipeline.process(job)
        except FacewardenError as err:
            if not err.retryable or attempt == settings.workers.max_attempts:
                return pipeline.quarantine_after_failure(job, err)
            time.sleep(backoff(attempt, settings.workers.backoff_base, 5.0))
    raise AssertionError("unreachable")
