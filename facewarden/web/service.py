"""What the HTTP API does, without HTTP: an API call is a source like any other.

An upload is written to the ``api-uploads`` store under the state dir and becomes a Job:
a sync call runs it through this process's Pipeline (same stages, same audit record, same
quarantine); an async call or a batch puts it on the daemon's queue for the workers. Results
land in the ``api-results`` store; a sync call's upload and results are deleted once
answered unless ``http.api_keep_uploads`` is set. Who submitted which job is kept beside
(``<state>/api/jobs/<id>.json``) so that only that key (or an admin) may read its result.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import posixpath
import re
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from facewarden.config.schema import Settings
from facewarden.daemon.jobs import Job
from facewarden.daemon.pipeline import AUDIT_SUFFIX, Outcome, Pipeline
from facewarden.errors import FacewardenError, InputRejected
from facewarden.handlers import base as handlers
from facewarden.storage.audit import AuditLog, render
from facewarden.storage.base import Store
from facewarden.storage.local import LocalStore
from facewarden.storage.stores import open_stores

log = structlog.get_logger("facewarden.api")

UPLOADS, RESULTS = "api-uploads", "api-results"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif", ".gif"}


def safe_name(name: str | None, default: str = "upload.bin") -> str:
    base = posixpath.basename((name or "").replace("\\", "/")).strip(". ")
    return _SAFE_NAME.sub("_", base)[:120] or default


@dataclass(slots=True)
class SyncResult:
    outcome: Outcome
    outputs: list[tuple[str, str, bytes]]  # (key, content type, bytes)


class ApiService:
    def __init__(self, settings: Settings, *, stores: dict[str, Store] | None = None,
                 audit: AuditLog | None = None, queue: Any = None):
        self.settings = settings
        self.stores = dict(stores) if stores else open_stores(settings.all_stores())
        for name in (UPLOADS, RESULTS, "quarantine"):
            if name not in self.stores:
                self.stores.update(open_stores({name: settings.all_stores()[name]}))
        self.audit = audit or AuditLog(settings.state_dir)
        self.queue = queue
        self.jobs_dir = Path(settings.state_dir) / "api" / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # Sync calls answer with the result and delete it: their upload and result files need
        # no fsync (a crash fails the call, the caller retries; the audit record is durable).
        # Async uploads stay fsynced: the queued job must find its input after a crash.
        self._sync_stores = dict(self.stores)
        if not settings.http.api_keep_uploads:
            for name in (UPLOADS, RESULTS):
                root = getattr(self.stores[name], "root", None)
                if root is not None:
                    self._sync_stores[name] = LocalStore(name, root, fsync=False)
        self._pipeline: Pipeline | None = None
        self._lock = threading.Lock()  # models are not shared across threads: one sync job at a time
        self._gallery: Any = None

    # -- jobs ------------------------------------------------------------------------
    def _job(self, handler: str, params: dict[str, Any], data: bytes, filename: str, owner: str,
             *, prefix: str | None = None, stores: dict[str, Store] | None = None) -> Job:
        job_id = uuid.uuid4().hex
        key = f"{prefix or job_id}/{safe_name(filename)}"
        (stores or self.stores)[UPLOADS].put(key, data, content_type="application/octet-stream")
        return Job(id=job_id, handler=handler, params=params, store=UPLOADS, key=key, target=RESULTS,
                   strip_prefix="", originals="keep" if self.settings.http.api_keep_uploads else "delete",
                   quarantine_store="quarantine", force=True,
                   hints={"source": "api", "by": f"api:{owner}", "event_at": time.time()})

    def validate(self, handler: str, params: dict[str, Any]) -> dict[str, Any]:
        """Raises UnknownBackend / InputRejected (422) before anything is written."""
        return handlers.get(handler).validate_params(params)

    def run_sync(self, handler: str, params: dict[str, Any], data: bytes, filename: str, owner: str) -> SyncResult:
        clean = self.validate(handler, params)
        job = self._job(handler, clean, data, filename, owner, stores=self._sync_stores)
        with self._lock:
            outcome = self._sync_pipeline().process(job)
        outputs = []
        store = self._sync_stores[RESULTS]
        for o in outcome.record.get("outputs") or []:
            outputs.append((o["key"], o.get("content_type") or "application/octet-stream", store.get(o["key"])))
        if not self.settings.http.api_keep_uploads:
            for o in outcome.record.get("outputs") or []:
                store.delete(o["key"])
                store.delete(o["key"] + AUDIT_SUFFIX)
            for name in (UPLOADS, RESULTS):  # the call's own folder, now empty
                root = getattr(self._sync_stores[name], "root", None)
                if root is not None:
                    with contextlib.suppress(OSError):
                        (Path(root) / job.id).rmdir()
        return SyncResult(outcome, outputs)

    def _sync_pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.settings, self._sync_stores, audit=self.audit)
        return self._pipeline

    def submit(self, handler: str, params: dict[str, Any], data: bytes, filename: str, owner: str) -> str:
        clean = self.validate(handler, params)
        job = self._job(handler, clean, data, filename, owner)
        self._enqueue(job)
        self._remember(job.id, {"kind": "job", "owner": owner, "handler": handler, "members": [job.id]})
        return job.id

    def _enqueue(self, job: Job) -> None:
        if self.queue is None:
            raise FacewardenError("api.no_queue", "async jobs need the daemon's queue (run `facewarden run`)",
                                  retryable=True)
        self.queue.put(job)
        log.info("job.queued", job_id=job.id, source="api", store=job.store, key=job.key, handler=job.handler)

    def submit_batch(self, handler: str, params: dict[str, Any], archive: bytes, owner: str) -> str:
        clean = self.validate(handler, params)
        members = list(safe_members(archive, self.settings.http.batch_max_files,
                                    self.settings.http.batch_max_unpacked_bytes))
        batch_id = uuid.uuid4().hex
        jobs = []
        for name, data in members:
            prefix = posixpath.join(f"batch-{batch_id}", posixpath.dirname(name)).rstrip("/")
            job = self._job(handler, clean, data, name, owner, prefix=prefix)
            jobs.append(job)
        names = {job.id: name for job, (name, _data) in zip(jobs, members, strict=True)}
        self._remember(batch_id, {"kind": "batch", "owner": owner, "handler": handler,
                                  "members": [j.id for j in jobs], "names": names})
        for job in jobs:
            self._enqueue(job)
        return batch_id

    def _remember(self, job_id: str, facts: dict[str, Any]) -> None:
        (self.jobs_dir / f"{job_id}.json").write_text(json.dumps({**facts, "created": time.time()}))

    def owner_facts(self, job_id: str) -> dict[str, Any] | None:
        if not re.fullmatch(r"[0-9a-f]{32}", job_id):
            return None
        path = self.jobs_dir / f"{job_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def member_status(self, job_id: str) -> dict[str, Any]:
        record = self.audit.find_job(job_id)
        if record is not None:
            return {"id": job_id, "state": "done", "outcome": record.get("outcome"), "reason": record.get("reason"),
                    "faces": (record.get("facts") or {}).get("faces"),
                    "audit": {"seq": record["seq"], "hash": record["hash"]}}
        state = getattr(self.queue, "job_state", lambda _id: None)(job_id) if self.queue is not None else None
        return {"id": job_id, "state": "running" if state == "leased" else "queued"}

    def status(self, job_id: str, facts: dict[str, Any]) -> dict[str, Any]:
        members = [self.member_status(m) for m in facts["members"]]
        if facts["kind"] == "job":
            return {**members[0], "kind": "job", "handler": facts["handler"]}
        done = sum(m["state"] == "done" for m in members)
        counts: dict[str, int] = {}
        for m in members:
            if m["state"] == "done":
                counts[m["outcome"]] = counts.get(m["outcome"], 0) + 1
        return {"id": job_id, "kind": "batch", "handler": facts["handler"],
                "state": "done" if done == len(members) else ("running" if done else "queued"),
                "total": len(members), "done": done, "outcomes": counts}

    def result_of(self, job_id: str) -> list[tuple[str, str, bytes]] | None:
        """The outputs of a finished single job (None while it runs)."""
        record = self.audit.find_job(job_id)
        if record is None:
            return None
        store = self.stores[RESULTS]
        return [(o["key"], o.get("content_type") or "application/octet-stream", store.get(o["key"]))
                for o in record.get("outputs") or []]

    def batch_zip(self, facts: dict[str, Any]) -> bytes | None:
        """Results, each member's audit record and a CSV summary, as one ZIP."""
        records = {m: self.audit.find_job(m) for m in facts["members"]}
        if any(r is None for r in records.values()):
            return None
        store = self.stores[RESULTS]
        buf = io.BytesIO()
        summary = io.StringIO()
        writer = csv.writer(summary)
        writer.writerow(["input", "outcome", "reason", "faces", "outputs", "audit_seq", "audit_hash"])
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for job_id, record in records.items():
                assert record is not None
                name = facts["names"][job_id]
                keys = []
                for o in record.get("outputs") or []:
                    arc = f"results/{posixpath.dirname(name)}/{posixpath.basename(o['key'])}".replace("//", "/")
                    zf.writestr(arc, store.get(o["key"]))
                    keys.append(arc)
                zf.writestr(f"audit/{record['seq']:08d}.json", render(record))
                reason = record.get("reason") or {}
                writer.writerow([name, record.get("outcome"), reason.get("code", ""),
                                 (record.get("facts") or {}).get("faces", ""), " ".join(keys),
                                 record["seq"], record["hash"]])
            zf.writestr("summary.csv", summary.getvalue())
        return buf.getvalue()

    def blurred_preview(self, seq: int) -> bytes | None:
        """A quarantined file with every face blurred, for review; None when it cannot be
        decoded or anonymized (then nothing is shown: fail closed). Not stored, not audited:
        it never leaves the reviewer's response."""
        from facewarden.handlers import imageio
        from facewarden.storage import quarantine as book

        entry = book.find(self.audit, seq)
        if entry is None or not book.has_bytes(entry, self.stores):
            return None
        data = self.stores[entry.quarantine["store"]].get(entry.quarantine["key"])
        try:
            decoded = imageio.decode(data, max_pixels=self.settings.limits.max_pixels,
                                     min_side=self.settings.limits.min_side)
            handler = handlers.get("anonymize")
            with self._lock:
                ctx = self._sync_pipeline().context()
                result = handler.run(decoded, handler.validate_params({"mode": "blur"}), ctx)
        except FacewardenError:
            return None
        from PIL import Image

        with Image.open(io.BytesIO(result.outputs[0].data)) as img:
            img = img.convert("RGB")
            img.thumbnail((800, 800))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
        return buf.getvalue()

    # -- gallery ---------------------------------------------------------------------
    def gallery(self) -> Any:
        if self._gallery is None:
            from facewarden.storage.gallery import open_configured

            self._gallery = open_configured(self.settings)
        return self._gallery


def safe_members(archive: bytes, max_files: int, max_bytes: int):
    """Image members of a ZIP, refusing bombs and escapes before anything is unpacked:
    sizes come from the central directory and are enforced again while reading (a forged
    header does not help), names are normalised and may not climb out or be absolute."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile:
        raise InputRejected("batch.not_zip", "the batch body is not a ZIP archive") from None
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > max_files:
        raise InputRejected("batch.too_many_files", f"the ZIP holds {len(infos)} files, above the limit of {max_files}")
    if sum(i.file_size for i in infos) > max_bytes:
        raise InputRejected("batch.too_large", f"the ZIP unpacks to more than {max_bytes} bytes")
    out = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        raw = info.filename.replace("\\", "/")
        norm = posixpath.normpath(raw)
        if raw.startswith("/") or norm.startswith("..") or re.match(r"^[A-Za-z]:", raw) or "\x00" in raw:
            raise InputRejected("batch.unsafe_path", f"the ZIP member {raw!r} points outside the archive")
        if posixpath.basename(norm).startswith(".") or posixpath.splitext(norm)[1].lower() not in _IMAGE_EXT:
            continue  # __MACOSX/._x, thumbs, text files: not ours to process
        parts = [safe_name(p, "x") for p in norm.split("/")]
        name = "/".join(parts)
        if name in seen:
            raise InputRejected("batch.duplicate_name", f"the ZIP holds {name!r} twice")
        seen.add(name)
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
        total += len(data)
        if len(data) > info.file_size or total > max_bytes:
            raise InputRejected("batch.too_large", "a ZIP member unpacks to more than its header says")
        out.append((name, data))
    if not out:
        raise InputRejected("batch.empty", "the ZIP holds no image files")
    return out
