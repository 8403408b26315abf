"""Retrying a quarantine entry by hand: the same job, now, through the normal pipeline.

The job reads the input's bytes from the quarantine store but is otherwise the job the
entry's record describes (handler, params) with the target its route names today; when no
route matches (inputs of `facewarden process`), the caller names an output folder. The
retry writes its own audit record; the entry is closed by a `retry` action record naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facewarden.config.schema import Settings
from facewarden.daemon.jobs import Event, Job
from facewarden.daemon.oneshot import _run_with_retries
from facewarden.daemon.pipeline import Outcome, Pipeline
from facewarden.daemon.routing import Router
from facewarden.errors import UsageError
from facewarden.storage import quarantine as book
from facewarden.storage.audit import AuditLog
from facewarden.storage.base import Store
from facewarden.storage.local import LocalStore

RETRY_TARGET = "retry-out"


def job_for(settings: Settings, entry: book.Entry, stores: dict[str, Store], out: Path | None) -> Job:
    record = entry.record
    inp = entry.input
    handler, params = record.get("handler"), record.get("params") or {}
    if not handler:
        raise UsageError("quarantine.no_handler", f"entry {entry.seq} names no handler to run")
    routed = Router(settings).route(Event(store=inp.get("store", ""), key=inp.get("key", ""),
                                          source=record.get("source") or ""))
    if out is not None:
        stores[RETRY_TARGET] = LocalStore(RETRY_TARGET, out)
        job = Job(handler=handler, params=params, store="", key="", target=RETRY_TARGET)
    elif routed is not None:
        job = routed
        job.handler, job.params = handler, params
    else:
        raise UsageError("quarantine.no_route", f"entry {entry.seq} came from {record.get('source')!r}, which no "
                         "configured route serves (e.g. `facewarden process`): pass --out DIR for its result")
    # The quarantine keeps the input under "<its store>/<its key>": strip the store name so
    # the result lands where the route (or --out) would have put it the first time.
    job.strip_prefix = f"{inp.get('store')}/{job.strip_prefix}"
    job.store, job.key = entry.quarantine["store"], entry.quarantine["key"]
    job.originals = "delete"  # the quarantined copy goes once it has a result (or a new entry)
    job.hints = {"source": "quarantine-retry", "retry_of": entry.seq}
    return job


def retry_entry(settings: Settings, audit: AuditLog, stores: dict[str, Store], entry: book.Entry, *,
                out: Path | None = None) -> Outcome:
    job = job_for(settings, entry, stores, out)
    outcome = _run_with_retries(Pipeline(settings, stores, audit=audit), job, settings)
    book.record_action(audit, entry, "retry", result={"seq": outcome.record.get("seq"),
                                                       "outcome": outcome.outcome})
    return outcome


__all__: list[Any] = ["job_for", "retry_entry"]
