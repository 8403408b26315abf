"""DMS post-upload webhook: ``POST /webhooks/dms`` queues an image; the daemon's
``GET /jobs/{id}`` (facewarden/daemon/http.py) reports on it and accepts this source's
secret as well as ``http.job_status_secret``.

Authentication is an HMAC-SHA256 over the timestamp and the raw body with a secret shared
with the DMS, checked in constant time::

    X-Facewarden-Timestamp: 1763700000            (unix seconds)
    X-Facewarden-Signature: sha256=<hex(HMAC(secret, f"{timestamp}." + body))>

(signing.py has the scheme; for ``GET /jobs/{id}`` the signed "body" is the method and
path.) A request outside the replay window
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

import json
import posixpath
import threading
import time
import uuid
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from facewarden.config.sources import DMS_IMAGE_TYPES, parse_source
from facewarden.config.sources import DmsWebhookSourceConfig as DmsWebhookOptions
from facewarden.daemon import metrics
from facewarden.daemon.jobs import Event
from facewarden.daemon.signing import BadSignature, sign, verify
from facewarden.daemon.sources import Emit, SourceContext, register_source
from facewarden.errors import ConfigError, FacewardenError, UnsafeKey
from facewarden.storage.base import safe_key

log = structlog.get_logger("facewarden.sources.dms_webhook")

IMAGE_TYPES = tuple(DMS_IMAGE_TYPES)  # the config's default list (kept importable by this name)


def parse_options(cfg: Any, ctx: SourceContext, model: type[Any]) -> Any:
    """The source's validated options (see facewarden/config/sources.py), and a check
    that the stores they name are open in this process."""
    opts = parse_source(cfg)
    name = opts.name
    if not isinstance(opts, model):
        raise ConfigError("config.invalid", f"sources[{name}].type: {opts.type!r} options given "
                          f"to a {model.__name__} source")
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
        # read from secret / secret_file / secret_credential and checked (>= 16 bytes) by the config
        assert self.opts.secret is not None
        self._secret = self.opts.secret.get_secret_value().encode()
        #: The daemon's GET /jobs/{id} accepts this secret too (a DMS polls what it queued).
        self.job_status_secret = self._secret
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
        ]

    # -- HTTP ------------------------------------------------------------------------

    def _answer(self, status: int, body: dict[str, Any]) -> Response:
        metrics.WEBHOOK_REQUESTS.labels(source=self.name, status=str(status)).inc()
        return JSONResponse(body, status_code=status)

    def _verify(self, request: Request, signed_body: bytes, *, once: bool) -> None:
        try:
            expected = verify(request.headers, signed_body, [self._secret], self.opts.replay_window)
        except BadSignature as bad:
            raise _Problem(401, bad.code, bad.message) from None
        if once and not self._seen.first_time(expected, time.time()):
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
    "parse_options",
    "sign",
]
