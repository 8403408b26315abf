"""`facewarden process`: a batch over files and folders through the daemon's pipeline.

Same pipeline, same audit log, same quarantine; only the queue is skipped (jobs run in
order in this process) and originals are always kept.

Where results go, so that no two inputs ever share an output and no output ever replaces
an input:
- with ``out``: each input's path relative to the common parent of all arguments is
  mirrored under ``out`` (``c/a/x.jpg c/b/x.jpg --out o`` gives ``o/a/x.jpg``,
  ``o/b/x.jpg``; one folder argument maps to its own contents, as before);
- without ``out``: beside each input, named ``<stem><suffix><ext>`` with the handler's
  suffix (``photo_anonymized.jpg``, ``photo_idphoto.jpg``), as deface users expect.
An existing output with other content is refused (reason ``output.exists``) unless
``replace="always"`` (``--overwrite``).
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
from facewarden.errors import FacewardenError, InputRejected, UnknownBackend, UsageError
from facewarden.handlers import base as handlers
from facewarden.storage.local import LocalStore
from facewarden.storage.stores import open_stores

INPUT_STORE = "input"
OUTPUT_STORE = "outgoing"


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in DEFAULT_IGNORE)


def _walk(root: Path, skip: set[Path]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d) and (Path(dirpath) / d) not in skip)
        for fn in sorted(filenames):
            if not _ignored(fn):
                yield Path(dirpath) / fn


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def plan_inputs(inputs: list[Path], out: Path | None, beside_suffix: str) -> tuple[Path, list[Path]]:
    """The common root of the arguments and every input file under it. Refuses (before
    anything is read or written) a batch whose results could replace one of its inputs."""
    args = [p.absolute() for p in inputs]
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in args]))
    out_abs = out.absolute() if out is not None else None
    skip = {out_abs} if out_abs is not None else set()
    files: list[Path] = []
    for path in args:
        for f in (_walk(path, skip) if path.is_dir() else [path]):
            if out_abs is None and Path(f.stem).name.endswith(beside_suffix) and path.is_dir():
                continue  # an earlier result beside its input, not an input
            files.append(f)
    if out_abs is not None:
        inside = [f for f in files if _is_within(f.parent.resolve(), out_abs.resolve())]
        if inside:
            raise UsageError("output.is_input", f"--out {out} holds the input {inside[0]}: its results would "
                             "replace the originals; choose another output folder, or leave --out out to "
                             f"write <name>{beside_suffix}<ext> beside each input")
    return root, list(dict.fromkeys(files))


def process_paths(settings: Settings, inputs: list[Path], out: Path | None, handler: str, params: dict[str, Any],
                  *, echo: Callable[[str], None] = print, replace: str = "never", force: bool = False) -> int:
    """Returns the number of inputs that did not succeed."""
    try:  # bad params are the caller's mistake, not the inputs': say so once, touch nothing
        chosen = handlers.get(handler)
        params = chosen.validate_params(params)
    except (InputRejected, UnknownBackend) as err:
        raise UsageError(err.code, err.message) from err
    root, files = plan_inputs(inputs, out, chosen.beside_suffix)
    stores = open_stores(settings.all_stores())
    stores[INPUT_STORE] = LocalStore(INPUT_STORE, root)
    if out is not None:
        stores[OUTPUT_STORE] = LocalStore(OUTPUT_STORE, out)
    pipeline = Pipeline(settings, stores)
    # Models are checked once, up front: a missing one stops the batch with one line
    # (ModelError -> exit 78) instead of quarantining every input one by one.
    chosen.warm_up(pipeline.context(), params)
    jobs: list[tuple[Path, Job]] = []
    for f in files:
        try:
            key = stores[INPUT_STORE].key_of(f)
        except FacewardenError as err:
            echo(f"{f}: rejected [{err.code}] {err.message}")
            continue
        jobs.append((f, Job(handler=handler, params=params, store=INPUT_STORE, key=key,
                            target=OUTPUT_STORE if out is not None else INPUT_STORE,
                            output_suffix="" if out is not None else chosen.beside_suffix,
                            replace=replace, force=force, hints={"source": "cli", "event_at": time.time()})))
    failures = 0
    for path, job in jobs:
        outcome = _run_with_retries(pipeline, job, settings)
        shown = repr(str(path)) if "\n" in str(path) else str(path)
        if outcome.outcome in ("ok", "duplicate"):
            faces = (outcome.record.get("facts") or {}).get("faces")
            extra = f" (faces={faces})" if faces is not None else ""
            what = "ok" if outcome.outcome == "ok" else "already there, unchanged"
            if "copy_of" in outcome.record:
                what = f"ok (copy of record {outcome.record['copy_of']['seq']})"
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
