"""S3 event notifications pushed by MinIO's webhook target (``notify_webhook``).

MinIO POSTs each notification as JSON with ``Authorization: Bearer <auth_token>``. We
answer 200 only once every object in it is a durable job, so a 5xx makes MinIO keep the
event (in its ``queue_dir``) and retry. Answers: 401 bad or missing token, 413 body over
``max_body_bytes`` (checked while reading, not trusting Content-Length), 400 not a JSON
object, 503 not started or the queue refused. Notifications that name no new object
(test events, removals, unsafe keys, foreign buckets) get 200 with ``accepted: 0``: a
retry could never change them.

MinIO side: ``mc admin config set ALIAS notify_webhook:facewarden
endpoint=http://daemon:8088/webhooks/s3/<source name> auth_token=<token>``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from facewarden.config.sources import WebhookSourceConfig as WebhookOptions
from facewarden.daemon.sources import Emit, SourceContext, register_source
from facewarden.daemon.sources.s3_events import (
    BucketMap,
    RecentEvents,
    check_stores,
    emit_all,
    normalize_s3_notification,
    parse_options,
)

log = structlog.get_logger(__name__)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class _TooLarge(Exception):
    pass


class WebhookSource:
    def __init__(self, opts: WebhookOptions, buckets: BucketMap, token: str):
        self.name = opts.name
        self.opts = opts
        self.buckets = buckets
        self.path = opts.path or f"/webhooks/s3/{opts.name}"
        self._token = token.encode("utf-8")
        self._emit: Emit | None = None
        self._recent = RecentEvents()

    def start(self, emit: Emit) -> None:
        self._emit = emit

    def stop(self) -> None:
        self._emit = None

    def ready(self) -> bool:
        return self._emit is not None

    def routes(self) -> list[Route]:
        return [Route(self.path, self._handle, methods=["POST"], name=f"source-{self.name}")]

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        # compare_digest on equal-type bytes: time does not depend on where they differ
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("utf-8"), self._token)

    async def _read(self, request: Request) -> bytes:
        limit = self.opts.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _TooLarge
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _TooLarge
        return bytes(body)

    async def _handle(self, request: Request) -> Response:
        if not self._authorized(request.headers.get("authorization", "")):
            log.warning("source.webhook_unauthorized", source=self.name,
                        client=request.client.host if request.client else None)
            resp = _error(401, "auth.invalid", "a valid Authorization: Bearer token is required")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        try:
            body = await self._read(request)
        except _TooLarge:
            return _error(413, "body.too_large",
                          f"the body exceeds {self.opts.max_body_bytes} bytes")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body.invalid", "the body is not JSON")
        if not isinstance(doc, dict):
            return _error(400, "body.invalid", "the body is not a JSON object")
        emit = self._emit
        if emit is None:
            return _error(503, "source.stopped", "the source is not running")
        events = normalize_s3_notification(doc, buckets=self.buckets, source=self.name)
        try:
            accepted = await run_in_threadpool(emit_all, events, emit, self._recent)
        except Exception as exc:
            log.error("source.emit_failed", source=self.name, error=type(exc).__name__,
                      detail=str(exc)[:200])
            return _error(503, "queue.unavailable", "the event could not be queued; retry")
        return JSONResponse({"accepted": accepted, "objects": len(events)})


def _factory(cfg: Any, ctx: SourceContext) -> WebhookSource:
    opts = parse_options(WebhookOptions, cfg)
    assert opts.token is not None  # the options model requires one
    token = opts.token.get_secret_value()
    return WebhookSource(opts, check_stores(opts.stores, ctx.stores, opts.name), token)


register_source("s3-webhook", _factory)
