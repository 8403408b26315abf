"""Re-drive: jobs quarantined because of an outage go back to the queue once it is over.

A job ends in quarantine for an infrastructure reason when its retry budget ran out (this
version), or after three quick attempts (earlier versions: ``store.error``,
``store.write_failed``...). Its input is then in the quarantine store, or still where it
was. When the stores it needs answer again, ``redrive`` queues a fresh job for it, routed
as the original was, and appends a ``redrive`` audit record naming the quarantine record
it supersedes, so that nothing is re-driven twice. The daemon calls it whenever a store
comes back (and once at start-up, for records of earlier runs); ``facewarden quarantine
retry`` can call ``redrive`` by hand.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from facewarden.daemon import metrics
from facewarden.daemon.jobs import Event, Job
from facewarden.daemon.routing import Router
from facewarden.errors import INFRASTRUCTURE_CODES, FacewardenError
from facewarden.storage.audit import AuditLog
from facewarden.storage.base import join_key

log = structlog.get_logger("facewarden.redrive")

_lock = threading.Lock()


def pending(audit: AuditLog) -> Iterator[dict[str, Any]]:
    """Quarantine records with an outage as their reason that nothing superseded yet:
    no ``redrive`` record names them, and their input got no final record since."""
    conn = audit._db.conn()
    done = {row[0] for row in conn.execute(
        "SELECT json_extract(record, '$.redrive_of.seq') FROM records WHERE kind='redrive'")}
    codes = sorted(INFRASTRUCTURE_CODES)
    for seq, text, digest in conn.execute(
            "SELECT seq, record, hash FROM records WHERE kind='job' AND outcome='quarantined' "
            f"AND json_extract(record, '$.reason.code') IN ({','.join('?' * len(codes))}) ORDER BY seq",
            codes).fetchall():
        if seq in done:
            continue
        record = {**json.loads(text), "hash": digest}
        inp = record.get("input") or {}
        later = conn.execute(
            "SELECT 1 FROM records WHERE seq>? AND input_store=? AND input_key=? "
            "AND outcome IN ('ok','rejected','duplicate') LIMIT 1",
            (seq, inp.get("store"), inp.get("key"))).fetchone()
        if later is None:
            yield record


def redrive(settings: Any, audit: AuditLog, queue: Any, stores: dict[str, Any], *,
            is_up: Callable[[str], bool] | None = None, router: Router | None = None) -> int:
    """Queues a fresh job for every pending record whose stores are up; returns how many.

    ``is_up(store_name)`` (default: every store is up) keeps records whose stores are
    still down for a later call."""
    router = router or Router(settings)
    up = is_up or (lambda _name: True)
    count = 0
    with _lock:  # the monitor's threads may call this for several stores at once
        for record in list(pending(audit)):
            try:
                job, note = _job_for(record, router, stores, up)
            except FacewardenError as err:  # a store failed while we looked: next time
                log.warning("redrive.deferred", seq=record["seq"], code=err.code, reason=err.message)
                continue
            if job is None:
                if note is not None:
                    _mark(audit, record, None, note)
                continue
            queue.put(job)
            _mark(audit, record, job, None)
            metrics.REDRIVEN.labels(store=record["input"].get("store", "")).inc()
            log.info("job.redriven", job_id=job.id, of_seq=record["seq"], store=job.store,
                     code=record["reason"]["code"])
            count += 1
    return count


def _job_for(record: dict[str, Any], router: Router, stores: dict[str, Any],
             up: Callable[[str], bool]) -> tuple[Job | None, str | None]:
    """The job that finishes what the quarantined one could not, or (None, why not).
    (None, None) means "not now": a store it needs is still down."""
    inp = record.get("input") or {}
    orig_store, orig_key = inp.get("store"), inp.get("key")
    source = record.get("source") or ""
    route = router.match(Event(store=orig_store or "", key=orig_key or "", source=source))
    if route is None or not orig_store or not orig_key:
        return None, "no route matches the quarantined input any more"
    quarantine = record.get("quarantine") or {}
    needed = {orig_store, route.target, quarantine.get("store") or route.quarantine_store}
    if not all(up(name) for name in needed if name):
        return None, None
    hints = {"source": source, "event_at": time.time(), "redrive_of": record["seq"]}
    common = dict(handler=record.get("handler") or route.handler,
                  params=record.get("params") if isinstance(record.get("params"), dict) else dict(route.params),
                  target=route.target, target_prefix=route.prefix, processed_store=route.processed_store,
                  processed_prefix=route.processed_prefix, quarantine_store=route.quarantine_store,
                  hints=hints)
    src = stores.get(orig_store)
    if src is not None and src.stat(orig_key) is not None:
        return Job(store=orig_store, key=orig_key, originals=route.originals,
                   strip_prefix=route.strip_prefix, **common), None
    qstore_name, qkey = quarantine.get("store"), quarantine.get("key")
    qstore = stores.get(qstore_name) if qstore_name else None
    if qstore is not None and qkey and qstore.stat(qkey) is not None:
        # The bytes wait in quarantine under "<input store>/<key>": strip that again so
        # the result lands where the first attempt would have put it.
        strip = join_key(orig_store, route.strip_prefix) + "/" if route.strip_prefix else f"{orig_store}/"
        if orig_store == qstore_name and "/" in orig_key:
            # A re-driven job that was quarantined again: its key is already "<store>/<key>".
            strip = f"{orig_store}/{orig_key.split('/', 1)[0]}/"
        return Job(store=qstore_name, key=qkey, strip_prefix=strip,
                   originals="move" if route.originals == "move" else "delete", **common), None
    return None, "the input is neither where it was nor in quarantine"


def _mark(audit: AuditLog, record: dict[str, Any], job: Job | None, note: str | None) -> None:
    entry: dict[str, Any] = {
        "kind": "redrive",
        "redrive_of": {"seq": record["seq"], "hash": record["hash"]},
        "input": {"store": (record.get("input") or {}).get("store"),
                  "key": (record.get("input") or {}).get("key")},
    }
    if job is not None:
        entry["redrive_job"] = {"id": job.id, "store": job.store, "key": job.key}
    else:
        entry["reason"] = {"code": "redrive.impossible", "message": note}
        log.warning("redrive.impossible", of_seq=record["seq"], reason=note)
    audit.append(entry)
