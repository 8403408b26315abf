"""One job, start to finish: load, hash, dedupe, decode, handle, write, audit, tidy up.

The order is what makes the guarantees:
- outputs are written only after the handler succeeded (fail closed);
- the audit record is appended only after every output is durable;
- the original is moved or deleted only after the audit record is durable;
- the queue is acked (by the caller) only after all of that.
A crash between any two steps leaves a job that, redelivered, converges to the same
files and exactly one final audit record for the job.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from facewarden.config.schema import Settings
from facewarden.daemon.jobs import Job
from facewarden.errors import FacewardenError, InputRejected, ProcessingFailed
from facewarden.handlers import base as handlers
from facewarden.handlers import imageio
from facewarden.storage.audit import AuditLog
from facewarden.storage.base import Store, join_key, safe_key
from facewarden.storage.local import LocalStore
from facewarden.video.media import is_video_name, sniff

log = structlog.get_logger("facewarden.pipeline")

AUDIT_SUFFIX = ".audit.json"
_EXT_ALIASES = {".jpg": {".jpg", ".jpeg", ".jpe", ".jfif"}, ".tif": {".tif", ".tiff"}}


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
    """Keeps the input's sub-path and name; keeps its extension when it already names the
    output's format (photo.JPEG stays photo.JPEG), replaces it otherwise."""
    rel = job.key
    if job.strip_prefix and rel.startswith(job.strip_prefix):
        rel = rel[len(job.strip_prefix):].lstrip("/")
    stem, ext = posixpath.splitext(rel)
    if not stem or stem.endswith("/"):
        stem, ext = rel, ""
    keep = not suffix and ext.lower() in _EXT_ALIASES.get(extension, {extension})
    return join_key(job.target_prefix, stem + suffix + (ext if keep else extension))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        started = time.time()
        timings: dict[str, float] = {}
        done = self.audit.find_job(job.id)
        if done is not None:
            # Redelivery of a job whose record is already durable: only tidy-up may be left.
            self._tidy_original(job, done["outcome"])
            return Outcome(done["outcome"], done, [o["key"] for o in done.get("outputs", [])], redelivered=True)

        store = self._store(job.store)
        key = safe_key(job.key)
        base: dict[str, Any] = {"job_id": job.id, "handler": job.handler, "source": job.hints.get("source"),
                                "attempt": job.attempts + 1, "event_at": job.hints.get("event_at")}
        info = store.stat(key)
        if info is None:
            return self._finish_without_input(job, base, started)
        if is_video_name(key):  # videos stream through temp files: facewarden/daemon/video_job.py
            from facewarden.daemon import video_job
            return video_job.process(self, job, store, key, info, base, started)
        input_meta = {"store": job.store, "key": key, "uri": store.uri(key), "size": info.size,
                      "version": info.version}
        if info.size > self.settings.limits.max_bytes:
            err = InputRejected("input.too_large", f"the file is {info.size} bytes, above the limit of "
                                f"{self.settings.limits.max_bytes} bytes")
            return self._quarantine(job, None, {**base, "input": input_meta}, err, started, timings)

        t = time.perf_counter()
        data = store.get(key)
        if sniff(data[:64]) is not None:  # a video under a photo's name (or none)
            from facewarden.daemon import video_job
            return video_job.process(self, job, store, key, info, base, started, data=data)
        input_meta["sha256"] = _sha256(data)
        input_meta["size"] = len(data)
        record = {**base, "input": input_meta}
        timings["read_ms"] = _ms(t)

        try:
            handler = handlers.get(job.handler)
            params = handler.validate_params(job.params)
        except InputRejected as err:
            record["params"] = job.params
            return self._quarantine(job, data, record, err, started, timings)
        record["params"] = params
        idem = idempotency_key(input_meta["sha256"], job.handler, params)
        record["idempotency_key"] = idem

        remote = self._record_beside_result(job, idem)
        if remote is not None and remote.get("job_id") == job.id:
            # Another host finished this very job and died before acking it.
            self._tidy_original(job, remote["outcome"])
            log.info("job.already_done_elsewhere", job_id=job.id, host=remote.get("host"))
            return Outcome(remote["outcome"], remote, [o["key"] for o in remote.get("outputs", [])],
                           redelivered=True)
        prior = self.audit.find_done(idem) or remote
        if prior is not None:
            record.update(outcome="duplicate", duplicate_of={"seq": prior["seq"], "hash": prior["hash"]},
                          reason={"code": "input.duplicate",
                                  "message": f"identical input already processed (record {prior['seq']})"},
                          outputs=prior.get("outputs", []), timings=_finish(timings, started))
            full = self.audit.append(record)
            self._tidy_original(job, "duplicate")
            log.info("job.duplicate", job_id=job.id, handler=job.handler, duplicate_of=prior["seq"])
            return Outcome("duplicate", full, [o["key"] for o in prior.get("outputs", [])])

        try:
            t = time.perf_counter()
            image = imageio.decode(data, max_pixels=self.settings.limits.max_pixels,
                                   min_side=self.settings.limits.min_side)
            timings["decode_ms"] = _ms(t)
            t = time.perf_counter()
            result = handler.run(image, params, self.context())
            timings["handler_ms"] = _ms(t)
        except InputRejected as err:
            return self._quarantine(job, data, record, err, started, timings)
        except FacewardenError:
            raise
        except Exception as exc:
            raise ProcessingFailed("handler.crashed", f"the {job.handler} handler failed: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}") from exc

        # Only now, with a complete result in memory, does anything get written.
        t = time.perf_counter()
        target = self._store(job.target)
        outputs = []
        for out in result.outputs:
            okey = output_key(job, out.extension, out.suffix)
            target.put(okey, out.data, content_type=out.content_type,
                       metadata={"facewarden-input-sha256": input_meta["sha256"], "facewarden-job": job.id})
            outputs.append({"store": job.target, "key": okey, "uri": target.uri(okey), "sha256": _sha256(out.data),
                            "size": len(out.data), "content_type": out.content_type})
        commit = getattr(handler, "commit", None)
        if commit is not None:
            commit(result, params, self.context(), input_sha256=input_meta["sha256"], input_key=key)
        timings["write_ms"] = _ms(t)

        record.update(outcome="ok", reason=None, outputs=outputs, facts=result.facts,
                      models=[m.as_dict() for m in result.models], image_notes=list(image.notes),
                      timings=_finish(timings, started))
        if outputs:
            where = (job.target, outputs[0]["key"] + AUDIT_SUFFIX)
        else:
            where = (job.target, output_key(job, "", "") + AUDIT_SUFFIX)
        full = self.audit.append(record, place=self._placer(*where))
        self._tidy_original(job, "ok")
        log.info("job.ok", job_id=job.id, handler=job.handler, outputs=len(outputs),
                 faces=result.facts.get("faces"), ms=full["timings"]["total_ms"])
        return Outcome("ok", full, [o["key"] for o in outputs])

    def _record_beside_result(self, job: Job, idem: str) -> dict[str, Any] | None:
        """The audit copy beside where this job's result would be, when it is a final
        record for the same input, handler and params. Worker hosts each keep their own
        audit index, but they share the target store: this is what they agree on."""
        ext = posixpath.splitext(job.key)[1].lower()
        if not ext:
            return None
        try:
            data = self._store(job.target).get(output_key(job, ext, "") + AUDIT_SUFFIX)
            record = json.loads(data)
        except (FileNotFoundError, FacewardenError, ValueError):
            return None
        if record.get("idempotency_key") == idem and record.get("outcome") in ("ok", "rejected"):
            return record
        return None

    # -- failure paths ---------------------------------------------------------------
    def quarantine_after_failure(self, job: Job, err: FacewardenError) -> Outcome:
        """The last attempt failed for a retryable reason: give up, fail closed."""
        if is_video_name(job.key):
            from facewarden.daemon import video_job
            return video_job.quarantine_after_failure(self, job, err)
        started = time.time()
        base: dict[str, Any] = {"job_id": job.id, "handler": job.handler, "source": job.hints.get("source"),
                                "attempt": job.attempts + 1, "params": job.params,
                                "event_at": job.hints.get("event_at")}
        store = self._store(job.store)
        try:
            info = store.stat(job.key)
        except FacewardenError:
            info = None
        data = None
        if info is not None and info.size <= self.settings.limits.max_bytes:
            data = store.get(job.key)
        meta = {"store": job.store, "key": job.key, "uri": store.uri(job.key)}
        if data is not None:
            meta.update(sha256=_sha256(data), size=len(data), version=info.version)
        base["input"] = meta
        return self._quarantine(job, data, base, err, started, {}, final_outcome="quarantined")

    def _quarantine(self, job: Job, data: bytes | None, record: dict[str, Any], err: FacewardenError,
                    started: float, timings: dict[str, float], final_outcome: str = "rejected") -> Outcome:
        """Nothing goes to the target store. The input goes to quarantine with its record."""
        qstore = self._store(job.quarantine_store)
        qkey = join_key(job.store, job.key)
        moved = False
        src = self.stores.get(job.store)
        if data is None and isinstance(src, LocalStore) and isinstance(qstore, LocalStore) \
                and job.originals != "keep":
            moved = _move_local(src, job.key, qstore, qkey)
        elif data is not None:
            qstore.put(qkey, data, content_type="application/octet-stream")
        record.update(outcome=final_outcome, reason=err.as_dict(), outputs=[],
                      quarantine={"store": job.quarantine_store, "key": qkey, "uri": qstore.uri(qkey)},
                      timings=_finish(timings, started))
        full = self.audit.append(record, place=self._placer(job.quarantine_store, qkey + AUDIT_SUFFIX))
        if not moved:
            self._tidy_original(job, final_outcome)
        log.warning(f"job.{final_outcome}", job_id=job.id, handler=job.handler, code=err.code, reason=err.message)
        return Outcome(final_outcome, full)

    def _finish_without_input(self, job: Job, base: dict[str, Any], started: float) -> Outcome:
        record = {**base, "input": {"store": job.store, "key": job.key}, "params": job.params,
                  "outcome": "rejected", "outputs": [],
                  "reason": {"code": "input.missing", "message": "the input was gone before it could be read"},
                  "timings": _finish({}, started)}
        full = self.audit.append(record)
        log.warning("job.rejected", job_id=job.id, code="input.missing")
        return Outcome("rejected", full)

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

    def _tidy_original(self, job: Job, outcome: str) -> None:
        """Applies the route's policy for originals; runs only once the record is durable."""
        if job.originals == "keep":
            return
        src = self._store(job.store)
        if src.stat(job.key) is None:
            return
        if outcome in ("rejected", "quarantined"):
            src.delete(job.key)  # its bytes are safe in quarantine already
            return
        if job.originals == "delete":
            src.delete(job.key)
        elif job.originals == "move":
            dest = self._store(job.processed_store)
            dkey = join_key(job.processed_prefix, job.key)
            both_local = isinstance(src, LocalStore) and isinstance(dest, LocalStore)
            if not (both_local and _move_local(src, job.key, dest, dkey)):
                dest.put(dkey, src.get(job.key))
                src.delete(job.key)


class _LazyServices(dict):
    """Services for handlers, opened on first use (the gallery only when enroll/verify run)."""

    def __init__(self, settings: Settings):
        super().__init__()
        self._settings = settings

    def __missing__(self, name: str) -> Any:
        if name == "gallery":
            from facewarden.storage.gallery import open_gallery

            value = open_gallery(Path(self._settings.state_dir), self._settings.gallery.key_file)
        else:
            raise KeyError(name)
        self[name] = value
        return value


def _move_local(src: LocalStore, key: str, dest: LocalStore, dkey: str) -> bool:
    import os

    try:
        target = dest.path_of(dkey)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src.path_of(key), target)
        return True
    except OSError:
        return False


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def _finish(timings: dict[str, float], started: float) -> dict[str, float]:
    return {**timings, "total_ms": round((time.time() - started) * 1000, 1)}
