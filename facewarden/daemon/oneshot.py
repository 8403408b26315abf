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

import concurrent.futures
import fnmatch
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class BatchItem:
    """What happened to one input, for the caller to print (a line, JSON, a summary)."""

    path: Path
    outcome: str  # ok | duplicate | rejected | quarantined
    outputs: list[str] = field(default_factory=list)
    reason: dict[str, Any] | None = None
    faces: int | None = None
    copy_of: int | None = None
    record: dict[str, Any] | None = None  # seq and hash of the audit record
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.outcome in ("ok", "duplicate")


class _BatchPlan:
    """Everything a worker process needs to rebuild the same pipeline (picklable)."""

    def __init__(self, settings: Settings, root: Path, out: Path | None, log_level: str = "warning") -> None:
        self.settings, self.root, self.out = settings, root, out
        self.log_level = log_level  # worker processes log like the command that started them

    def stores(self) -> dict[str, Any]:
        stores = open_stores(self.settings.all_stores())
        stores[INPUT_STORE] = LocalStore(INPUT_STORE, self.root)
        if self.out is not None:
            stores[OUTPUT_STORE] = LocalStore(OUTPUT_STORE, self.out)
        return stores

    def pipeline(self) -> Pipeline:
        return Pipeline(self.settings, self.stores())


def plan_jobs(settings: Settings, inputs: list[Path], out: Path | None, handler: str, params: dict[str, Any],
              *, replace: str = "never", force: bool = False
              ) -> tuple[_BatchPlan, list[tuple[Path, Job]], list[BatchItem]]:
    """Validates params once (a bad one is the caller's mistake: UsageError, nothing touched),
    lists the inputs, and makes one job per input. Inputs refused by name come back as items."""
    try:
        chosen = handlers.get(handler)
        params = chosen.validate_params(params)
    except (InputRejected, UnknownBackend) as err:
        raise UsageError(err.code, err.message) from err
    root, files = plan_inputs(inputs, out, chosen.beside_suffix)
    plan = _BatchPlan(settings, root, out)
    inputs_store = LocalStore(INPUT_STORE, root)
    jobs: list[tuple[Path, Job]] = []
    refused: list[BatchItem] = []
    for f in files:
        try:
            key = inputs_store.key_of(f)
        except FacewardenError as err:
            refused.append(BatchItem(f, "rejected", reason=err.as_dict()))
            continue
        jobs.append((f, Job(handler=handler, params=params, store=INPUT_STORE, key=key,
                            target=OUTPUT_STORE if out is not None else INPUT_STORE,
                            output_suffix="" if out is not None else chosen.beside_suffix,
                            replace=replace, force=force, hints={"source": "cli", "event_at": time.time()})))
    return plan, jobs, refused


def run_batch(plan: _BatchPlan, jobs: list[tuple[Path, Job]], *, workers: int = 1) -> Iterator[BatchItem]:
    """Runs the jobs and yields one item per input as each finishes (order of completion).

    One worker runs in this process. More run in worker processes (forkserver), each
    building its own pipeline and loading its models once; this process loads none. Models are checked up front either
    way: a missing one raises ModelError before any input is touched."""
    if not jobs:
        return
    workers = max(1, min(workers, len(jobs)))
    handler = jobs[0][1].handler
    params = jobs[0][1].params
    if workers == 1:
        pipeline = plan.pipeline()
        handlers.get(handler).warm_up(pipeline.context(), params)
        for path, job in jobs:
            yield _item(path, job, pipeline, plan.settings)
        return
    # forkserver, not fork: the caller may have threads (a test runner, an embedding
    # application), and a forked copy of a process with threads can deadlock on a lock
    # some thread held at the fork.
    ctx = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                                initargs=(plan, handler, params, workers)) as pool:
        futures = [pool.submit(_worker_run, path, job) for path, job in jobs]
        try:
            for fut in concurrent.futures.as_completed(futures):
                yield fut.result()
        except concurrent.futures.process.BrokenProcessPool:
            # A worker could not start (missing models...): no job ran. Load the models here
            # once to raise the real error (ModelError: one line, exit 78).
            handlers.get(handler).warm_up(plan.pipeline().context(), params)
            raise
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


_WORKER: dict[str, Any] = {}


def _worker_init(plan: _BatchPlan, handler: str, params: dict[str, Any], workers: int) -> None:
    import signal

    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.pool import limit_native_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the batch stops
    configure_logging(plan.settings.log.format, plan.log_level)
    limit_native_threads(workers)
    pipeline = plan.pipeline()
    handlers.get(handler).warm_up(pipeline.context(), params)
    _WORKER.update(pipeline=pipeline, settings=plan.settings)


def _worker_run(path: Path, job: Job) -> BatchItem:
    return _item(path, job, _WORKER["pipeline"], _WORKER["settings"])


def _item(path: Path, job: Job, pipeline: Pipeline, settings: Settings) -> BatchItem:
    t0 = time.perf_counter()
    outcome = _run_with_retries(pipeline, job, settings)
    rec = outcome.record
    faces = (rec.get("facts") or {}).get("faces")
    return BatchItem(path, outcome.outcome, list(outcome.outputs), rec.get("reason"),
                     faces if isinstance(faces, int) else None,
                     (rec.get("copy_of") or {}).get("seq"),
                     {"seq": rec.get("seq"), "hash": rec.get("hash")}, time.perf_counter() - t0)


def process_paths(settings: Settings, inputs: list[Path], out: Path | None, handler: str, params: dict[str, Any],
                  *, echo: Callable[[str], None] = print, replace: str = "never", force: bool = False,
                  workers: int = 1) -> int:
    """Runs a batch printing one line per input; returns the number of inputs that did not
    succeed. (The CLI renders items itself: progress, JSON, summary.)"""
    plan, jobs, refused = plan_jobs(settings, inputs, out, handler, params, replace=replace, force=force)
    failures = 0
    for item in [*refused, *run_batch(plan, jobs, workers=workers)]:
        echo(describe(item))
        failures += not item.succeeded
    return failures


def describe(item: BatchItem) -> str:
    shown = repr(str(item.path)) if "\n" in str(item.path) else str(item.path)
    if item.succeeded:
        extra = f" (faces={item.faces})" if item.faces is not None else ""
        what = "ok" if item.outcome == "ok" else "already there, unchanged"
        if item.copy_of is not None:
            what = f"ok (copy of record {item.copy_of})"
        return f"{shown}: {what} -> {', '.join(item.outputs) or '-'}{extra}"
    reason = item.reason or {}
    return f"{shown}: {item.outcome} [{reason.get('code')}] {reason.get('message')}"


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
