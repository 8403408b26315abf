"""One job, start to finish, as named stages:

    read -> dedupe -> decode -> run -> write -> commit -> record -> dispose

The order is what makes the guarantees:
- outputs are written only after the handler succeeded (fail closed);
- no output ever replaces an input, and an existing object with other content is never
  silently replaced (the job's ``replace`` policy decides);
- the audit record is appended only after every output is durable;
- the original is moved or deleted only after the audit record is durable;
- the queue is acked (by the caller) only after all of that.
A crash between any two steps leaves a job that, redelivered, converges to the same
files and exactly one final audit record for the job.

Dedup means "this target already has this result": the same input bytes, handler and
params (the idempotency key) already produced outputs that are present and intact at
the keys this job would write in this job's target store. The same bytes under another
key or for another target get their own result there, copied from the first one when
its outputs are still readable (the record says ``copy_of``), processed again otherwise.
Failures are never remembered as seen: a rejected input dropped again is tried again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import structlog

from facewarden.config.schema import Settings
from facewarden.daemon.jobs import Job
from facewarden.errors import FacewardenError, InputRejected, ProcessingFailed, UnknownBackend
from facewarden.handlers import base as handlers
from facewarden.handlers import imageio
from facewarden.storage.audit import AuditLog
from facewarden.storage.base import Store, join_key, safe_key
from facewarden.video.media import is_video_name, sniff

log = structlog.get_logger("facewarden.pipeline")

AUDIT_SUFFIX = ".audit.json"
_EXT_ALIASES = {".jpg": {".jpg", ".jpeg", ".jpe", ".jfif"}, ".tif": {".tif", ".tiff"}, ".heic": {".heic", ".heif"}}


@dataclass(slots=True)
class Outcome:
    outcome: str  # ok | rejected | quarantined | duplicate
    record: dict[str, Any]
    outputs: list[str] = field(default_factory=list)
    redelivered: bool = False


def idempotency_key(input_sha256: str, handler: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"sha256": input_sha256, "handler": handler, "params": params},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def output_key(job: Job, extension: str, suffix: str) -> str:
    """Keeps the input's sub-path and name (plus the job's ``output_suffix``, e.g.
    ``_anonymized`` for results written beside their input); keeps the input's extension
    when it already names the output's format (photo.JPEG stays photo.JPEG), replaces it
    otherwise."""
    rel = job.key
    if job.strip_prefix and rel.startswith(job.strip_prefix):
        rel = rel[len(job.strip_prefix):].lstrip("/")
    stem, ext = posixpath.splitext(rel)
    if not stem or stem.endswith("/"):
        stem, ext = rel, ""
    keep = not suffix and ext.lower() in _EXT_ALIASES.get(extension, {extension})
    return join_key(job.target_prefix, stem + job.output_suffix + suffix + (ext if keep else extension))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(slots=True)
class _Planned:
    """One output about to be written: where, what, and (for copies) where it came from."""

    key: str
    data: bytes
    content_type: str
    extension: str
    suffix: str


@dataclass(slots=True)
class _Run:
    """What the stages of one job hand each other."""

    job: Job
    started: float
    record: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    data: bytes | None = None
    handler: handlers.Handler | None = None
    params: dict[str, Any] | None = None
    idem: str | None = None


class Pipeline:
    """Processes jobs in one worker process. Stores, audit log and handler models are
    opened once and reused for every job."""

    def __init__(self, settings: Settings, stores: dict[str, Store], *, audit: AuditLog | None = None,
                 services: dict[str, Any] | None = None):
        self.settings = settings
        self.stores = stores
        self.audit = audit or AuditLog(settings.state_dir)
        self._services = services
        self.ctx: handlers.HandlerContext | None = None

    # -- context ---------------------------------------------------------------------
    def context(self) -> handlers.HandlerContext:
        if self.ctx is None:
            self.ctx = handlers.HandlerContext(models_dir=Path(self.settings.models_dir),
                                               services=self._services if self._services is not None
                                               else _LazyServices(self.settings))
        return self.ctx

    def warm_up(self) -> None:
        """Loads the models of every routed handler once, before the first job."""
        from facewarden.handlers.video import handler_for

        for route in self.settings.routes:
            handler = handler_for(route.handler, route.media)
            handler.warm_up(self.context(), handler.validate_params(route.params))

    # -- the job ---------------------------------------------------------------------
    def process(self, job: Job) -> Outcome:
        done = self.audit.find_job(job.id)
        if done is not None:
            # Redelivery of a job whose record is already durable: only tidy-up may be left.
            self._dispose(job, done["outcome"])
            return Outcome(done["outcome"], done, _keys(done), redelivered=True)
        run = _Run(job, time.time(), self._base_record(job))
        early = self._read(run)
        if early is not None:
            return early
        early = self._resolve_handler(run)
        if early is not None:
            return early
        early = self._dedupe(run)
        if early is not None:
            return early
        try:
            image = self._decode(run)
            result = self._run_handler(run, image)
            planned = [_Planned(output_key(job, o.extension, o.suffix), o.data, o.content_type, o.extension, o.suffix)
                       for o in result.outputs]
            outputs = self._write(run, planned)
        except InputRejected as err:
            return self._quarantine(run, err)
        self._commit(run, result)
        run.record.update(outcome="ok", reason=None, outputs=outputs, facts=result.facts,
                          models=[m.as_dict() for m in result.models], image_notes=list(image.notes))
        full = self._record(run, outputs)
        self._dispose(job, "ok")
        log.info("job.ok", job_id=job.id, source=job.hints.get("source"), store=job.store, key=job.key,
                 handler=job.handler, target=job.target, outputs=[o["key"] for o in outputs],
                 faces=result.facts.get("faces"), ms=full["timings"]["total_ms"])
        return Outcome("ok", full, [o["key"] for o in outputs])

    # -- stages ----------------------------------------------------------------------
    def _base_record(self, job: Job) -> dict[str, Any]:
        """The fields every record of this job carries, whatever its outcome."""
        return {"job_id": job.id, "handler": job.handler, "source": job.hints.get("source"),
                "attempt": job.attempts + 1, "event_at": job.hints.get("event_at"), "target": job.target,
                "input": {"store": job.store, "key": job.key},
                **({"by": job.hints["by"]} if job.hints.get("by") else {})}  # who asked (e.g. "api:<key name>")

    def _read(self, run: _Run) -> Outcome | None:
        """Reads and hashes the input; finishes the job early when it is gone or too big."""
        job = run.job
        store = self._store(job.store)
        key = safe_key(job.key)
        info = store.stat(key)
        if info is None:
            run.record.update(params=job.params, outcome="rejected", outputs=[],
                              reason={"code": "input.missing", "message": "the input was gone before it could be read"})
            full = self.audit.append({**run.record, "timings": _finish({}, run.started)})
            log.warning("job.rejected", job_id=job.id, source=job.hints.get("source"), store=job.store, key=job.key,
                        code="input.missing")
            return Outcome("rejected", full)
        if is_video_name(key):  # videos stream through temp files: facewarden/daemon/video_job.py
            from facewarden.daemon import video_job

            base = {k: v for k, v in run.record.items() if k != "input"}
            return video_job.process(self, job, store, key, info, base, run.started)
        meta = {"store": job.store, "key": key, "uri": store.uri(key), "size": info.size, "version": info.version}
        run.record["input"] = meta
        if info.size > self.settings.limits.max_bytes:
            run.record["params"] = job.params
            return self._quarantine(run, InputRejected(
                "input.too_large", f"the file is {info.size} bytes, above the limit of "
                f"{self.settings.limits.max_bytes} bytes"))
        t = time.perf_counter()
        run.data = store.get(key)
        if sniff(run.data[:64]) is not None:  # a video under a photo's name (or none)
            from facewarden.daemon import video_job

            base = {k: v for k, v in run.record.items() if k != "input"}
            return video_job.process(self, job, store, key, info, base, run.started, data=run.data)
        meta.update(sha256=_sha256(run.data), size=len(run.data))
        run.timings["read_ms"] = _ms(t)
        return None

    def _resolve_handler(self, run: _Run) -> Outcome | None:
        job = run.job
        try:
            run.handler = handlers.get(job.handler)
            run.params = run.handler.validate_params(job.params)
        except UnknownBackend as err:
            run.record["params"] = job.params
            return self._quarantine(run, InputRejected(err.code, err.message))
        except InputRejected as err:
            run.record["params"] = job.params
            return self._quarantine(run, err)
        run.record["params"] = run.params
        run.idem = idempotency_key(run.record["input"]["sha256"], job.handler, run.params)
        run.record["idempotency_key"] = run.idem
        return None

    def _dedupe(self, run: _Run) -> Outcome | None:
        """Finishes the job without running the handler when its target already has the
        result (duplicate), or when an earlier result can be copied there (ok, copy_of)."""
        job = run.job
        remote = self._record_beside_result(job, run.idem)
        if remote is not None and _orphan_copy(remote, job):
            remote = None  # see _orphan_copy: this job is not done, the copy is overwritten
        if remote is not None and remote.get("job_id") == job.id:
            # Another host finished this very job and died before acking it.
            self._dispose(job, remote["outcome"])
            log.info("job.already_done_elsewhere", job_id=job.id, host=remote.get("host"))
            return Outcome(remote["outcome"], remote, _keys(remote), redelivered=True)
        if job.force:
            return None
        priors = self.audit.find_results(run.idem)
        if remote is not None and all(p["hash"] != remote.get("hash") for p in priors):
            priors.append(remote)
        target = self._store(job.target)
        for prior in priors:
            if self._target_has(job, target, prior):
                return self._duplicate(run, prior)
        if isinstance(run.handler, handlers.CommittingHandler):
            return None  # its commit (e.g. adding to the gallery) must run: never a mere copy
        for prior in priors:
            copied = self._read_outputs(job, prior)
            if copied is not None:
                return self._copy(run, prior, copied)
        return None

    def _decode(self, run: _Run) -> imageio.DecodedImage:
        t = time.perf_counter()
        image = imageio.decode(run.data, max_pixels=self.settings.limits.max_pixels,
                               min_side=self.settings.limits.min_side)
        run.timings["decode_ms"] = _ms(t)
        return image

    def _run_handler(self, run: _Run, image: imageio.DecodedImage) -> handlers.HandlerResult:
        t = time.perf_counter()
        try:
            result = run.handler.run(image, run.params, self.context())
        except FacewardenError:
            raise
        except Exception as exc:
            raise ProcessingFailed("handler.crashed", f"the {run.job.handler} handler failed: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        run.timings["handler_ms"] = _ms(t)
        return result

    def _write(self, run: _Run, planned: list[_Planned]) -> list[dict[str, Any]]:
        """Only now, with a complete result in memory, does anything get written. Every
        output is checked first, so a refused one leaves no partial result behind."""
        job = run.job
        t = time.perf_counter()
        target = self._store(job.target)
        for out in planned:
            self._check_output_slot(job, target, out)
        outputs = []
        for out in planned:
            digest = _sha256(out.data)
            target.put(out.key, out.data, content_type=out.content_type,
                       metadata={"facewarden-input-sha256": run.record["input"]["sha256"], "facewarden-job": job.id})
            outputs.append({"store": job.target, "key": out.key, "uri": target.uri(out.key), "sha256": digest,
                            "size": len(out.data), "content_type": out.content_type,
                            "extension": out.extension, "suffix": out.suffix})
        run.timings["write_ms"] = _ms(t)
        return outputs

    def _commit(self, run: _Run, result: handlers.HandlerResult) -> None:
        """Local state beyond output files (enroll adds to the gallery), after the outputs
        are durable and before the record: a retried job commits again, idempotently."""
        if isinstance(run.handler, handlers.CommittingHandler):
            run.handler.commit(result, run.params, self.context(), input_sha256=run.record["input"]["sha256"],
                               input_key=run.record["input"]["key"])

    def _record(self, run: _Run, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Appends the final record, with its copy beside the (first) result."""
        job = run.job
        run.record["timings"] = _finish(run.timings, run.started)
        beside = outputs[0]["key"] if outputs else output_key(job, "", "")
        return self.audit.append(run.record, place=self._placer(job.target, beside + AUDIT_SUFFIX))

    def _dispose(self, job: Job, outcome: str) -> None:
        """Applies the route's policy for originals; runs only once the record is durable."""
        if job.originals == "keep":
            return
        src = self._store(job.store)
        if src.stat(job.key) is None:
            return
        if outcome in ("rejected", "quarantined") or job.originals == "delete":
            src.delete(job.key)  # a rejected input's bytes are safe in quarantine already
        elif job.originals == "move":
            src.move_to(job.key, self._store(job.processed_store), join_key(job.processed_prefix, job.key))

    # -- dedupe helpers --------------------------------------------------------------
    def _planned_keys(self, job: Job, prior: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Where this job would put each of ``prior``'s outputs."""
        planned = []
        for o in prior.get("outputs") or []:
            ext = o.get("extension")
            if ext is None:  # records written before outputs carried their format
                ext = posixpath.splitext(o["key"])[1].lower()
            planned.append((output_key(job, ext, o.get("suffix", "")), o))
        return planned

    def _target_has(self, job: Job, target: Store, prior: dict[str, Any]) -> bool:
        planned = self._planned_keys(job, prior)
        if not planned:  # a result without files: the same input key into the same target
            return prior.get("target") == job.target and (prior.get("input") or {}).get("key") == job.key
        for key, o in planned:
            data = target.read_if_exists(key)
            if data is None or _sha256(data) != o.get("sha256"):
                return False
        return True

    def _read_outputs(self, job: Job, prior: dict[str, Any]) -> list[_Planned] | None:
        """The prior result's outputs, re-aimed at this job's keys, when every one is
        still readable and intact; None otherwise (then the handler runs again)."""
        planned = self._planned_keys(job, prior)
        if not planned:
            return None
        out = []
        for key, o in planned:
            try:
                data = self._read_recorded(o)
            except (FacewardenError, OSError):
                data = None
            if data is None or _sha256(data) != o.get("sha256"):
                return None
            ext = o.get("extension") or posixpath.splitext(o["key"])[1].lower()
            out.append(_Planned(key, data, o.get("content_type", "application/octet-stream"), ext,
                                o.get("suffix", "")))
        return out

    def _read_recorded(self, o: dict[str, Any]) -> bytes | None:
        """An output named by a record. The record's URI is the truth: a store name may
        now point elsewhere (``process --out`` names its folder "outgoing" every run)."""
        store = self.stores.get(o.get("store", ""))
        if store is not None and (not o.get("uri") or store.uri(o["key"]) == o["uri"]):
            return store.read_if_exists(o["key"])
        uri = o.get("uri") or ""
        if uri.startswith("file://"):
            path = Path(unquote(urlparse(uri).path))
            return path.read_bytes() if path.is_file() else None
        return None

    def _duplicate(self, run: _Run, prior: dict[str, Any]) -> Outcome:
        job = run.job
        target = self._store(job.target)
        outputs = [{**o, "store": job.target, "key": key, "uri": target.uri(key)}
                   for key, o in self._planned_keys(job, prior)]
        run.record.update(outcome="duplicate", duplicate_of={"seq": prior["seq"], "hash": prior["hash"]},
                          reason={"code": "input.duplicate",
                                  "message": f"this target already has this result (record {prior['seq']})"},
                          outputs=outputs, timings=_finish(run.timings, run.started))
        full = self.audit.append(run.record)
        self._dispose(job, "duplicate")
        log.info("job.duplicate", job_id=job.id, source=job.hints.get("source"), store=job.store, key=job.key,
                 handler=job.handler, target=job.target, outputs=[o["key"] for o in outputs],
                 duplicate_of=prior["seq"])
        return Outcome("duplicate", full, [o["key"] for o in outputs])

    def _copy(self, run: _Run, prior: dict[str, Any], planned: list[_Planned]) -> Outcome:
        """The same result for another key or target: a copy of the first one's outputs,
        recorded as such (``copy_of``), with the first record's facts and models."""
        job = run.job
        try:
            outputs = self._write(run, planned)
        except InputRejected as err:
            return self._quarantine(run, err)
        run.record.update(outcome="ok", reason=None, outputs=outputs, facts=prior.get("facts") or {},
                          models=prior.get("models") or [], image_notes=prior.get("image_notes") or [],
                          copy_of={"seq": prior["seq"], "hash": prior["hash"]})
        full = self._record(run, outputs)
        self._dispose(job, "ok")
        log.info("job.ok", job_id=job.id, source=job.hints.get("source"), store=job.store, key=job.key,
                 handler=job.handler, target=job.target, outputs=[o["key"] for o in outputs], copy_of=prior["seq"],
                 ms=full["timings"]["total_ms"])
        return Outcome("ok", full, [o["key"] for o in outputs])

    def _record_beside_result(self, job: Job, idem: str) -> dict[str, Any] | None:
        """The audit copy beside where this job's result would be, when it is a final
        record for the same input, handler and params. Worker hosts each keep their own
        audit index, but they share the target store: this is what they agree on."""
        ext = posixpath.splitext(job.key)[1].lower()
        if not ext:
            return None
        try:
            data = self._store(job.target).read_if_exists(output_key(job, ext, "") + AUDIT_SUFFIX)
            record = json.loads(data) if data is not None else None
        except (FacewardenError, ValueError):
            return None
        if record and record.get("idempotency_key") == idem and record.get("outcome") == "ok":
            return record
        return None

    # -- output safety ---------------------------------------------------------------
    def _check_output_slot(self, job: Job, target: Store, out: _Planned) -> None:
        """Refuses an output that would replace this job's input, or an existing object
        whose content differs, unless the job's ``replace`` policy allows it."""
        src = self._store(job.store)
        if target.same_location(out.key, src, job.key):
            raise InputRejected("output.is_input", f"the result {target.uri(out.key)} would replace the input "
                                "itself; originals are never overwritten (choose another output folder)")
        existing = target.read_if_exists(out.key)
        if existing is None or _sha256(existing) == _sha256(out.data) or job.replace == "always":
            return
        if job.replace == "own" and self._is_own_result(job, target, out.key):
            return  # a newer version of the same input replaces its own earlier result
        if job.attempts > 0 and not self._belongs_to_another_input(job, _sha256(existing)):
            return  # most likely this job's own write, from an attempt that died before its record
        raise InputRejected("output.exists", f"{target.uri(out.key)} already exists with different content; "
                            "refusing to replace it (move it away, or pass --overwrite)")

    def _is_own_result(self, job: Job, target: Store, key: str) -> bool:
        """True when the object at ``key`` is a result we wrote for this same input key."""
        try:
            data = target.read_if_exists(key + AUDIT_SUFFIX)
            record = json.loads(data) if data is not None else None
        except (FacewardenError, ValueError):
            return False
        if not record:
            return False
        inp = record.get("input") or {}
        return inp.get("store") == job.store and inp.get("key") == job.key and \
            any(o.get("key") == key for o in record.get("outputs") or [])

    def _belongs_to_another_input(self, job: Job, digest: str) -> bool:
        return any((r.get("input") or {}).get("key") != job.key
                   and any(o.get("sha256") == digest for o in r.get("outputs") or [])
                   for r in self.audit.by_sha256(digest))

    # -- failure paths ---------------------------------------------------------------
    def quarantine_after_failure(self, job: Job, err: FacewardenError) -> Outcome:
        """The last attempt failed for a retryable reason: give up, fail closed."""
        if is_video_name(job.key):
            from facewarden.daemon import video_job

            return video_job.quarantine_after_failure(self, job, err)
        run = _Run(job, time.time(), {**self._base_record(job), "params": job.params})
        store = self._store(job.store)
        try:
            info = store.stat(job.key)
        except FacewardenError:
            info = None
        meta = {"store": job.store, "key": job.key, "uri": store.uri(job.key)}
        if info is not None and info.size <= self.settings.limits.max_bytes:
            run.data = store.get(job.key)
            meta.update(sha256=_sha256(run.data), size=len(run.data), version=info.version)
        run.record["input"] = meta
        return self._quarantine(run, err, final_outcome="quarantined")

    def _quarantine(self, run: _Run, err: FacewardenError, final_outcome: str = "rejected") -> Outcome:
        """Nothing goes to the target store. The input goes to quarantine with its record."""
        job = run.job
        qstore = self._store(job.quarantine_store)
        qkey = join_key(job.store, job.key)
        moved = False
        if run.data is not None:
            qstore.put(qkey, run.data, content_type="application/octet-stream")
        elif job.originals != "keep":  # not read (too large): move it without loading it here
            self._store(job.store).move_to(job.key, qstore, qkey)
            moved = True
        run.record.update(outcome=final_outcome, reason=err.as_dict(), outputs=[],
                          quarantine={"store": job.quarantine_store, "key": qkey, "uri": qstore.uri(qkey)},
                          timings=_finish(run.timings, run.started))
        full = self.audit.append(run.record, place=self._placer(job.quarantine_store, qkey + AUDIT_SUFFIX))
        if not moved:
            self._dispose(job, final_outcome)
        log.warning(f"job.{final_outcome}", job_id=job.id, source=job.hints.get("source"), store=job.store,
                    key=job.key, handler=job.handler, code=err.code, reason=err.message)
        return Outcome(final_outcome, full)

    # -- helpers ---------------------------------------------------------------------
    def _store(self, name: str) -> Store:
        try:
            return self.stores[name]
        except KeyError:
            raise ProcessingFailed("store.unknown", f"no store named {name!r}", retryable=False) from None

    def _placer(self, store_name: str, key: str):
        store = self._store(store_name)

        def place(_record: dict[str, Any], data: bytes) -> str:
            store.put(key, data, content_type="application/json")
            return f"{store_name}:{key}"

        return place


class _LazyServices(dict):
    """Services for handlers, opened on first use (the gallery only when enroll/verify run)."""

    def __init__(self, settings: Settings):
        super().__init__()
        self._settings = settings

    def __missing__(self, name: str) -> Any:
        if name == "gallery":
            from facewarden.storage.gallery import open_configured

            value = open_configured(self._settings)
        else:
            raise KeyError(name)
        self[name] = value
        return value


def _keys(record: dict[str, Any]) -> list[str]:
    return [o["key"] for o in record.get("outputs") or []]


def _orphan_copy(remote: dict[str, Any], job: Job) -> bool:
    """A copy of this very job's record, written by this host, for a job that failed for
    an outage (the worker's ``outage_retries`` hint) and has no record in our log (the
    caller checked ``find_job``): the store took the copy but the call failed (a stalled
    S3 PUT whose reply timed out), so the log rolled the record back. Trusting it would
    finish the job without any record; redoing the job rewrites the copy. (issue 16)"""
    import socket

    return (remote.get("job_id") == job.id and remote.get("host") == socket.gethostname()
            and bool(job.hints.get("outage_retries")))


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def _finish(timings: dict[str, float], started: float) -> dict[str, float]:
    return {**timings, "total_ms": round((time.time() - started) * 1000, 1)}
