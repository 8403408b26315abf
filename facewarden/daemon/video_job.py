"""One video job: the pipeline's guarantees, with the video streamed through temp files.

The pipeline hands a job here when the input is a video (by name, or by its first bytes).
The order of steps is the pipeline's: hash, dedupe, handle, write, audit, tidy. What
differs is that nothing is held in memory:

- the input is streamed from its store into a per-job work folder, hashed on the way;
- the handler writes the output into the same folder;
- the output is published with the store's ``put_file`` (local: temp file, fsync, rename;
  S3: a multipart upload, visible only once complete), so no partial video is ever seen;
- the work folder is wiped when the job starts (a crashed earlier attempt leaves one
  behind) and when it ends, so a redelivered job restarts cleanly from the input.

Progress (phase, frames done / total) is logged and written to
``STATE/progress/<job_id>.json``, read back with ``read_progress``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
import time
from pathlib import Path
from typing import Any

import structlog

from facewarden.daemon.jobs import Job
from facewarden.daemon.pipeline import (
    AUDIT_SUFFIX,
    Outcome,
    Pipeline,
    _finish,
    _ms,
    output_key,
)
from facewarden.errors import FacewardenError, InputRejected, ProcessingFailed
from facewarden.handlers import video as video_handlers
from facewarden.storage.base import Store, join_key
from facewarden.storage.local import LocalStore
from facewarden.video.media import FAMILIES, family_of_name, is_video_name, sniff
from facewarden.video.probe import VideoLimits
from facewarden.video.progress import clear_progress, read_progress, write_progress

__all__ = ["is_video", "process", "quarantine_after_failure", "read_progress"]

log = structlog.get_logger("facewarden.video_job")

#: Seconds between progress log lines / status file updates.
PROGRESS_EVERY_S = 2.0


def is_video(key: str, head: bytes | None = None) -> bool:
    """True when the key names a video, or (when given) the first bytes show one."""
    return is_video_name(key) or (head is not None and sniff(head[:64]) is not None)


def limits_of(settings: Any) -> VideoLimits:
    v = settings.video
    return VideoLimits(max_duration_s=v.max_duration_s, max_frame_pixels=v.max_frame_pixels,
                       max_frames=v.max_frames, max_total_pixels=v.max_total_pixels,
                       read_timeout_s=v.read_timeout_s, max_seconds=v.max_seconds)


def work_dir(settings: Any, job_id: str) -> Path:
    root = Path(settings.video.work_dir) if settings.video.work_dir else Path(settings.state_dir) / "video-work"
    return root / job_id


class _Progress:
    def __init__(self, state_dir: Path, job: Job):
        self.state_dir = state_dir
        self.job = job
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S and not (total and done >= total):
            return
        self._last = now
        log.info("video.progress", job_id=self.job.id, phase=phase, frames_done=done, frames_total=total)
        write_progress(self.state_dir, {"job_id": self.job.id, "key": self.job.key, "phase": phase,
                                        "frames_done": done, "frames_total": total, "updated_at": time.time()})

    def clear(self) -> None:
        clear_progress(self.state_dir, self.job.id)


def _fetch(store: Store, key: str, dest: Path, data: bytes | None) -> None:
    if data is not None:
        dest.write_bytes(data)
    elif hasattr(store, "get_file"):
        store.get_file(key, dest)
    else:  # a store without streaming reads: bounded by the photo limits anyway
        dest.write_bytes(store.get(key))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _put_file(store: Store, key: str, path: Path, **kw: Any) -> None:
    if hasattr(store, "put_file"):
        store.put_file(key, path, **kw)
    else:
        store.put(key, path.read_bytes(), **kw)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_extension(key: str, family: str) -> str:
    """The input's own extension when it names the container family we write, else the
    family's usual one."""
    ext = posixpath.splitext(key)[1].lower()
    if family_of_name(key) == family:
        return ext
    return {"mkv": ".mkv", "webm": ".webm", "avi": ".avi", "mov": ".mov"}.get(family, ".mp4")


def process(pipe: Pipeline, job: Job, store: Store, key: str, info: Any, base: dict[str, Any],
            started: float, *, data: bytes | None = None) -> Outcome:
    """The video counterpart of ``Pipeline.process`` from the point the input is known to exist."""
    settings = pipe.settings
    timings: dict[str, float] = {}
    input_meta = {"store": job.store, "key": key, "uri": store.uri(key), "size": info.size,
                  "version": info.version, "media": "video"}
    record: dict[str, Any] = {**base, "input": input_meta}
    if info.size > settings.video.max_bytes:
        err = InputRejected("video.too_large", f"the file is {info.size} bytes, above the video limit of "
                                               f"{settings.video.max_bytes} bytes")
        record["params"] = job.params
        return _quarantine(pipe, job, None, record, err, started, timings)
    wd = _fresh_dir(work_dir(settings, job.id))
    progress = _Progress(Path(settings.state_dir), job)
    progress("read", 0, 0)
    try:
        src, dst = wd / "input", wd / "output"
        t = time.perf_counter()
        _fetch(store, key, src, data)
        input_meta["sha256"] = _sha256_file(src)
        input_meta["size"] = src.stat().st_size
        timings["read_ms"] = _ms(t)
        try:
            handler = video_handlers.get(job.handler)
            params = handler.validate_params(job.params)
        except InputRejected as err:
            record["params"] = job.params
            return _quarantine(pipe, job, src, record, err, started, timings)
        record["params"] = params
        idem = pipe_idempotency(input_meta["sha256"], job.handler, params)
        record["idempotency_key"] = idem
        with open(src, "rb") as fh:
            family = sniff(fh.read(64)) or family_of_name(key) or "mp4"
        ext = output_extension(key, family)

        remote = _record_beside_result(pipe, job, ext, idem)
        if remote is not None and remote.get("job_id") == job.id:
            pipe._dispose(job, remote["outcome"])
            return Outcome(remote["outcome"], remote, [o["key"] for o in remote.get("outputs", [])],
                           redelivered=True)
        # "Already done" means this target already holds this result (the record beside
        # it); the same bytes under another key or target get their own result.
        prior = remote
        if prior is not None:
            record.update(outcome="duplicate", duplicate_of={"seq": prior["seq"], "hash": prior["hash"]},
                          reason={"code": "input.duplicate",
                                  "message": f"identical input already processed (record {prior['seq']})"},
                          outputs=prior.get("outputs", []), timings=_finish(timings, started))
            full = pipe.audit.append(record)
            pipe._dispose(job, "duplicate")
            log.info("job.duplicate", job_id=job.id, handler=job.handler, duplicate_of=prior["seq"])
            return Outcome("duplicate", full, [o["key"] for o in prior.get("outputs", [])])

        t = time.perf_counter()
        try:
            result = handler.run_file(src, dst, params, pipe.context(), limits=limits_of(settings),
                                      progress=progress)
        except InputRejected as err:
            return _quarantine(pipe, job, src, record, err, started, timings)
        except FacewardenError:
            raise
        except Exception as exc:
            raise ProcessingFailed("handler.crashed", f"the video {job.handler} handler failed: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        timings["handler_ms"] = _ms(t)

        # Only now, with a complete and verified output file, does anything get published.
        t = time.perf_counter()
        target = pipe._store(job.target)
        okey = output_key(job, ext, "")
        content_type = FAMILIES[family][1]
        out_sha = _sha256_file(dst)
        _put_file(target, okey, dst, content_type=content_type,
                  metadata={"facewarden-input-sha256": input_meta["sha256"], "facewarden-job": job.id})
        outputs = [{"store": job.target, "key": okey, "uri": target.uri(okey), "sha256": out_sha,
                    "size": dst.stat().st_size, "content_type": content_type}]
        timings["write_ms"] = _ms(t)
        record.update(outcome="ok", reason=None, outputs=outputs, facts=result.facts,
                      models=[m.as_dict() for m in result.models], timings=_finish(timings, started))
        full = pipe.audit.append(record, place=pipe._placer(job.target, okey + AUDIT_SUFFIX))
        pipe._dispose(job, "ok")
        log.info("job.ok", job_id=job.id, handler=job.handler, media="video", outputs=1,
                 frames=result.facts.get("frames"), tracks=result.facts.get("tracks"),
                 ms=full["timings"]["total_ms"])
        return Outcome("ok", full, [okey])
    finally:
        progress.clear()
        shutil.rmtree(wd, ignore_errors=True)


def pipe_idempotency(sha: str, handler: str, params: dict[str, Any]) -> str:
    from facewarden.daemon.pipeline import idempotency_key

    # "media" keeps a video job's key apart from a photo job with equal params.
    return idempotency_key(sha, handler, {**params, "media": "video"})


def _record_beside_result(pipe: Pipeline, job: Job, ext: str, idem: str) -> dict[str, Any] | None:
    try:
        record = json.loads(pipe._store(job.target).get(output_key(job, ext, "") + AUDIT_SUFFIX))
    except (FileNotFoundError, FacewardenError, ValueError):
        return None
    if record.get("idempotency_key") == idem and record.get("outcome") in ("ok", "rejected"):
        return record
    return None


def _quarantine(pipe: Pipeline, job: Job, src: Path | None, record: dict[str, Any], err: FacewardenError,
                started: float, timings: dict[str, float], final_outcome: str = "rejected") -> Outcome:
    """The pipeline's quarantine, streamed: the input goes to quarantine from its local copy
    (or is moved, store to store, when both are folders), never through memory."""
    qstore = pipe._store(job.quarantine_store)
    qkey = join_key(job.store, job.key)
    moved = False
    srcstore = pipe.stores.get(job.store)
    if isinstance(srcstore, LocalStore) and isinstance(qstore, LocalStore) and job.originals != "keep":
        try:
            srcstore.move_to(job.key, qstore, qkey)  # a rename between two folders
            moved = True
        except (OSError, FacewardenError):
            moved = False
    if not moved:
        if src is None and srcstore is not None and srcstore.stat(job.key) is not None:
            wd = _fresh_dir(work_dir(pipe.settings, job.id + "-q"))
            try:
                src = wd / "input"
                _fetch(srcstore, job.key, src, None)
                _put_file(qstore, qkey, src, content_type="application/octet-stream")
            finally:
                shutil.rmtree(wd, ignore_errors=True)
        elif src is not None:
            _put_file(qstore, qkey, src, content_type="application/octet-stream")
    record.update(outcome=final_outcome, reason=err.as_dict(), outputs=[],
                  quarantine={"store": job.quarantine_store, "key": qkey, "uri": qstore.uri(qkey)},
                  timings=_finish(timings, started))
    full = pipe.audit.append(record, place=pipe._placer(job.quarantine_store, qkey + AUDIT_SUFFIX))
    if not moved:
        pipe._dispose(job, final_outcome)
    log.warning(f"job.{final_outcome}", job_id=job.id, handler=job.handler, media="video", code=err.code,
                reason=err.message)
    return Outcome(final_outcome, full)


def quarantine_after_failure(pipe: Pipeline, job: Job, err: FacewardenError) -> Outcome:
    """The last attempt failed for a retryable reason: quarantine the video, streamed."""
    started = time.time()
    store = pipe._store(job.store)
    try:
        info = store.stat(job.key)
    except FacewardenError:
        info = None
    meta: dict[str, Any] = {"store": job.store, "key": job.key, "uri": store.uri(job.key), "media": "video"}
    if info is not None:
        meta.update(size=info.size, version=info.version)
    record = {"job_id": job.id, "handler": job.handler, "source": job.hints.get("source"),
              "attempt": job.attempts + 1, "params": job.params, "event_at": job.hints.get("event_at"),
              "input": meta}
    if info is None:
        return _quarantine(pipe, job, None, record, err, started, {}, final_outcome="quarantined")
    wd = _fresh_dir(work_dir(pipe.settings, job.id + "-q"))
    try:
        src = wd / "input"
        _fetch(store, job.key, src, None)
        meta["sha256"] = _sha256_file(src)
        return _quarantine(pipe, job, src, record, err, started, {}, final_outcome="quarantined")
    finally:
        shutil.rmtree(wd, ignore_errors=True)
