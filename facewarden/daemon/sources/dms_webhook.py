"""DMS post-upload webhook: ``POST /webhooks/dms`` queues an image, ``GET /jobs/{id}``
reports on it.

Authentication is an HMAC-SHA256 over the timestamp and the raw body with a secret shared
with the DMS, checked in constant time::

    X-Facewarden-Timestamp: 1763700000            (unix seconds)
    X-Facewarden-Signature: sha256=<hex(HMAC(secret, f"{timestamp}." + body))>

For ``GET /jobs/{id}`` the signed "body" is ``GET /jobs/{id}`` (method, space, path), so a
signature for one job cannot be used to read another. A request outside the replay window
(default 300 s either way) is refused (401), and so is a POST whose signature was already
seen inside the window (409): an attacker who captured a request cannot queue it again.
The seen-signature cache lives in memory; it covers one daemon, which is what receives the
webhook (behind a load balancer with several daemons, pin the DMS to one or shorten the
window).

Bodies:

- ``application/json``: ``{"key": "docs/2024/a.jpg", "store": "raw", "correlation_id": "..."}``
  names an object already in one of the allowed stores (``store`` optional: the default).
- ``multipart/form-data``: field ``file`` (the image; its part must have an image content
  type), optional ``key`` (name to store it under, else the file name) and
  ``correlation_id``. The upload is written to ``raw_store`` under
  ``<upload_prefix>/<job id>/<name>`` first, then queued like any other object.

Answers: 202 ``{"job_id", "status_url"}``; 400 bad body or unsafe key (``../``); 401 bad or
missing signature or stale timestamp; 404 unknown object; 409 replay; 413 too large; 415
wrong content type; 422 no route takes the object; 503 the queue is unavailable. Nothing
is queued unless the answer is 202.

Events carry hints ``job_id`` (the router uses it as the Job's id, so the id we answer is
the one ``GET /jobs/{id}`` finds) and ``correlation_id`` when given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from facewarden.daemon import metrics
from facewarden.daemon.jobs import Event
from facewarden.daemon.sources import Emit, SourceContext, register_source
from facewarden.errors import ConfigError, FacewardenError, UnsafeKey
from facewarden.storage.base import safe_key

log = structlog.get_logger("facewarden.sources.dms_webhook")

HDR_TIMESTAMP = "x-facewarden-timestamp"
HDR_SIGNATURE = "x-facewarden-signature"
IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/tiff",
    "image/bmp",
    "image/heic",
    "image/heif",
    # videos (anonymize): facewarden/video/media.py
    "video/mp4",
    "video/quicktime",
    "video/x-matroska",
    "video/webm",
    "video/x-msvideo",
)
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobStatusService(Protocol):
    """What GET /jobs/{id} needs (the daemon passes it as ``ctx.services["jobs"]``)."""

    def status(self, job_id: str) -> dict[str, Any] | None: ...


class DmsWebhookOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dms-webhook"] = "dms-webhook"
    name: str
    #: Path of the upload webhook; the status endpoint is `<jobs_path>/{id}`.
    path: str = "/webhooks/dms"
    jobs_path: str = "/jobs"
    #: Shared HMAC secret (prefer `secret_file`, or FACEWARDEN_SOURCES env overrides).
    secret: SecretStr | None = None
    secret_file: Path | None = None
    #: Store a JSON body names when it gives no `store`.
    store: str | None = None
    #: Stores a JSON body may name (default: just `store`).
    stores: list[str] = Field(default_factory=list)
    #: Where multipart uploads are written before processing; none = uploads refused (415).
    raw_store: str | None = None
    upload_prefix: str = "dms-uploads"
    #: Request body limit in bytes (default: http.max_body_bytes).
    max_body_bytes: int | None = Field(None, gt=0)
    #: Accepted clock skew / replay window, seconds.
    replay_window: float = Field(300.0, gt=0, le=3600)
    image_types: list[str] = Field(default_factory=lambda: list(IMAGE_TYPES))

    @model_validator(mode="after")
    def _check(self) -> DmsWebhookOptions:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("secret: give exactly one of `secret` or `secret_file`")
        if self.store is None and not self.stores and self.raw_store is None:
            raise ValueError("store: give `store` (JSON bodies), `raw_store` (uploads), or both")
        if not self.path.startswith("/") or not self.jobs_path.startswith("/"):
            raise ValueError("path: HTTP paths start with '/'")
        return self

    def allowed_stores(self) -> list[str]:
        return list(dict.fromkeys([*([self.store] if self.store else []), *self.stores]))


def parse_options(cfg: Any, ctx: SourceContext, model: type[BaseModel]) -> Any:
    """Validates a GenericSourceConfig against the source's own model; errors name the key."""
    raw = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg)
    name = raw.get("name", "?")
    try:
        opts = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"])
        if not loc:  # whole-model checks say "key: problem"
            loc, _, msg = msg.partition(": ")
        raise ConfigError("config.invalid", f"sources[{name}].{loc}: {msg}") from exc
    for key in ("store", "raw_store", "stores"):
        value = getattr(opts, key, None)
        for store in [value] if isinstance(value, str) else value or []:
            if ctx.stores and store not in ctx.stores:
                raise ConfigError(
                    "config.invalid",
                    f"sources[{name}].{key}: no store named {store!r} "
                    f"(known: {sorted(ctx.stores)})",
                )
    return opts


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The header value a DMS sends (also used by tests and client examples)."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _SeenSignatures:
    """Signatures accepted inside the replay window; an identical request is a replay."""

    def __init__(self, window: float, cap: int = 200_000):
        self._seen: dict[str, float] = {}
        self._window, self._cap = window, cap
        self._lock = threading.Lock()

    def first_time(self, signature: str, now: float) -> bool:
        with self._lock:
            if len(self._seen) > self._cap // 2:
                self._seen = {s: t for s, t in self._seen.items() if t > now}
            if self._seen.get(signature, 0) > now:
                return False
            if len(self._seen) >= self._cap:
                return False  # flooded: refuse rather than forget (fail closed)
            self._seen[signature] = now + 2 * self._window
            return True


class _Problem(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class DmsWebhookSource:
    def __init__(self, cfg: Any, ctx: SourceContext):
        self.opts: DmsWebhookOptions = parse_options(cfg, ctx, DmsWebhookOptions)
        self.name = self.opts.name
        self.ctx = ctx
        if self.opts.secret_file is not None:
            try:
                secret = self.opts.secret_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    "config.invalid",
                    f"sources[{self.name}].secret_file: cannot read "
                    f"{self.opts.secret_file} ({exc.strerror})",
                ) from exc
        else:
            secret = self.opts.secret.get_secret_value().encode()  # type: ignore[union-attr]
        if len(secret) < 16:
            raise ConfigError(
                "config.invalid",
                f"sources[{self.name}].secret: use at least 16 "
                "random bytes (e.g. `openssl rand -hex 32`)",
            )
        self._secret = secret
        http = getattr(getattr(ctx.settings, "http", None), "max_body_bytes", None)
        self.max_bytes = self.opts.max_body_bytes or http or 50 * 1024 * 1024
        self._seen = _SeenSignatures(self.opts.replay_window)
        self._emit: Emit | None = None
        self._running = False

    # -- Source protocol ---------------------------------------------------------------

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self._running = True

    def stop(self) -> None:
        self._running = False

    def ready(self) -> bool:
        return self._running

    def routes(self) -> list[Route]:
        return [
            Route(self.opts.path, self._post, methods=["POST"]),
            Route(self.opts.jobs_path.rstrip("/") + "/{job_id}", self._get_job, methods=["GET"]),
        ]

    # -- HTTP ------------------------------------------------------------------------

    def _answer(self, status: int, body: dict[str, Any]) -> Response:
        metrics.WEBHOOK_REQUESTS.labels(source=self.name, status=str(status)).inc()
        return JSONResponse(body, status_code=status)

    def _verify(self, request: Request, signed_body: bytes, *, once: bool) -> None:
        ts = request.headers.get(HDR_TIMESTAMP, "")
        sig = request.headers.get(HDR_SIGNATURE, "")
        if not ts or not sig:
            raise _Problem(
                401, "auth.missing", "missing X-Facewarden-Timestamp or -Signature header"
            )
        try:
            when = int(ts)
        except ValueError:
            raise _Problem(401, "auth.bad_timestamp", "the timestamp is not unix seconds") from None
        now = time.time()
        if abs(now - when) > self.opts.replay_window:
            raise _Problem(401, "auth.stale", "the timestamp is outside the replay window")
        expected = sign(self._secret, ts, signed_body)
        if not hmac.compare_digest(expected.encode(), sig.strip().lower().encode()):
            raise _Problem(401, "auth.bad_signature", "the signature does not match")
        if once and not self._seen.first_time(expected, now):
            raise _Problem(409, "auth.replayed", "this exact request was already received")

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    raise _Problem(
                        413, "body.too_large", f"the body exceeds {self.max_bytes} bytes"
                    )
            except ValueError:
                raise _Problem(400, "body.bad_length", "invalid Content-Length") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise _Problem(413, "body.too_large", f"the body exceeds {self.max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # lets request.form() parse what we already read
        return body

    async def _post(self, request: Request) -> Response:
        try:
            if not self._running or self._emit is None:
                raise _Problem(503, "source.stopped", "the webhook source is not running")
            body = await self._read_body(request)
            self._verify(request, body, once=True)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            job_id = uuid.uuid4().hex
            if ctype == "application/json":
                store, key, corr, version = await self._from_json(body)
            elif ctype == "multipart/form-data":
                store, key, corr, version = await self._from_upload(request, job_id)
            else:
                raise _Problem(
                    415, "body.content_type", "send application/json or multipart/form-data"
                )
            hints: dict[str, Any] = {"job_id": job_id}
            if corr:
                hints["correlation_id"] = corr
            # No version: an explicit request always makes a job (the daemon would drop a
            # repeat of a versioned event as a duplicate); the pipeline's idempotency key
            # still skips work already done.
            del version
            event = Event(store=store, key=key, source=self.name, hints=hints)
            emit = self._emit
            try:
                result = await run_in_threadpool(emit, event)
            except FacewardenError as err:
                log.error("webhook.enqueue_failed", source=self.name, code=err.code)
                raise _Problem(
                    503, "queue.unavailable", "the job could not be queued; try again later"
                ) from err
            if result is None:
                raise _Problem(422, "route.none", "no route of this daemon takes this object")
            job_id = result if isinstance(result, str) else job_id
            log.info("webhook.accepted", source=self.name, job_id=job_id, store=store)
            metrics.EVENTS.labels(source=self.name).inc()
            return self._answer(
                202, {"job_id": job_id, "status_url": f"{self.opts.jobs_path.rstrip('/')}/{job_id}"}
            )
        except _Problem as p:
            if p.status >= 500 or p.status in (401, 409):
                log.warning("webhook.refused", source=self.name, status=p.status, code=p.code)
            return self._answer(p.status, {"error": p.code, "message": p.message})

    def _check_store(self, store: str) -> Any:
        if store not in self.opts.allowed_stores():
            raise _Problem(400, "body.store", f"store {store!r} is not one this webhook may read")
        return self.ctx.stores.get(store)

    async def _from_json(self, body: bytes) -> tuple[str, str, str | None, str]:
        try:
            doc = json.loads(body)
        except ValueError:
            raise _Problem(400, "body.json", "the body is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
            raise _Problem(400, "body.key", "the JSON body needs a string `key`")
        unknown = set(doc) - {"key", "store", "correlation_id"}
        if unknown:
            raise _Problem(400, "body.fields", f"unknown field(s) {sorted(unknown)}")
        key = _safe(doc["key"])
        store_name = doc.get("store") or self.opts.store
        if not isinstance(store_name, str):
            raise _Problem(400, "body.store", "give a `store` (this webhook has no default)")
        store = self._check_store(store_name)
        version = ""
        if store is not None:
            try:
                info = await run_in_threadpool(store.stat, key)
            except FacewardenError as err:
                raise _Problem(503, "store.unavailable", err.message) from err
            if info is None:
                raise _Problem(404, "object.missing", f"no object {key!r} in store {store_name!r}")
            version = info.version
        return store_name, key, _corr(doc.get("correlation_id")), version

    async def _from_upload(self, request: Request, job_id: str) -> tuple[str, str, str | None, str]:
        if self.opts.raw_store is None:
            raise _Problem(415, "body.content_type", "this webhook takes JSON bodies only")
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as exc:
            raise _Problem(400, "body.multipart", "the multipart body cannot be parsed") from exc
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _Problem(400, "body.file", "the multipart body needs a `file` part")
        ptype = (upload.content_type or "").split(";")[0].strip().lower()
        if ptype not in self.opts.image_types:
            raise _Problem(
                415, "body.image_type", f"the file part must be one of {self.opts.image_types}"
            )
        name = form.get("key") if isinstance(form.get("key"), str) else None
        name = (
            _safe(name)
            if name
            else _safe(
                posixpath.basename((upload.filename or "upload").replace("\\", "/")) or "upload"
            )
        )
        data = await upload.read()
        if not data:
            raise _Problem(400, "body.file", "the file part is empty")
        key = _safe(f"{self.opts.upload_prefix.strip('/')}/{job_id}/{name}")
        store = self.ctx.stores[self.opts.raw_store]
        try:
            await run_in_threadpool(
                store.put, key, data, content_type=ptype, metadata={"facewarden-job": job_id}
            )
            info = await run_in_threadpool(store.stat, key)
        except FacewardenError as err:
            raise _Problem(503, "store.unavailable", err.message) from err
        corr = form.get("correlation_id")
        return (
            self.opts.raw_store,
            key,
            _corr(corr if isinstance(corr, str) else None),
            info.version if info is not None else "",
        )

    async def _get_job(self, request: Request) -> Response:
        try:
            path = request.url.path
            self._verify(request, f"GET {path}".encode(), once=False)
            job_id = request.path_params["job_id"]
            if not _JOB_ID.match(job_id):
                raise _Problem(404, "job.unknown", "no such job")
            service: JobStatusService | None = self.ctx.services.get("jobs")
            if service is None:
                raise _Problem(503, "jobs.unavailable", "job status is not available")
            status = await run_in_threadpool(service.status, job_id)
            if status is None:
                raise _Problem(404, "job.unknown", "no such job")
            return self._answer(200, status)
        except _Problem as p:
            return self._answer(p.status, {"error": p.code, "message": p.message})


def _safe(key: str) -> str:
    try:
        return safe_key(key)
    except UnsafeKey as err:
        raise _Problem(400, "key.unsafe", err.message) from err


def _corr(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise _Problem(
            400, "body.correlation_id", "correlation_id must be a string of <= 200 chars"
        )
    return value


def _factory(cfg: Any, ctx: SourceContext) -> DmsWebhookSource:
    return DmsWebhookSource(cfg, ctx)


register_source("dms-webhook", _factory)

__all__: list[str] = [
    "DmsWebhookOptions",
    "DmsWebhookSource",
    "JobStatusService",
    "parse_options",
    "sign",
]
