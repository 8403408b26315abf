"""RabbitMQ job messages (type ``amqp-jobs``): other systems ask for work by message.

The message schema (``facewarden.job/1``) is documented in docs/job-message.md and
validated here with ``JobMessageV1``. A valid message becomes an Event; the route that
listens to this source decides the defaults, and when it sets ``allow_overrides = true``
the message's ``handler``, ``params``, ``target`` and ``target_prefix`` win.

Event hints (the exact keys): ``handler``, ``params``, ``target``, ``target_prefix`` (each
only when the message gives it), ``correlation_id`` and ``reply_to`` (message body first,
AMQP properties second), and ``job_id`` when the message names one (the router then uses
it as the Job id).

Delivery: we consume with manual acks and ack a message only after the event was handed
over (the daemon's emit returns once the job is durable in the queue), so a crash in
between redelivers it. The request queue is a quorum queue with a delivery limit, so a
message that keeps failing is dead-lettered by the broker. A message that is invalid
(bad JSON, wrong schema, unsafe key, unknown store/handler, bad base64, too large) can
never succeed: it is published to the dead-letter exchange with ``x-facewarden-reason``
(code) and ``x-facewarden-reason-message`` headers and then acked, never requeued.
(A plain ``nack(requeue=False)`` cannot carry our reason, so we republish with confirms
first and ack after, which also never loses it.)

Inline images are written into ``raw_store`` under ``<inline_prefix>/<id>/<filename>``
before the event is emitted, so the worker reads them like any stored object and the
audit record names a real location.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import posixpath
import re
import threading
import time
import uuid
from typing import Any, Literal

import pika
import pika.exceptions as pex
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facewarden.config.sources import AmqpJobsSourceConfig as AmqpJobsOptions
from facewarden.daemon import amqp, metrics
from facewarden.daemon.backoff import Backoff
from facewarden.daemon.jobs import Event
from facewarden.daemon.sources import Emit, SourceContext, register_source
from facewarden.daemon.sources.dms_webhook import parse_options
from facewarden.errors import FacewardenError, UnsafeKey
from facewarden.storage.base import safe_key

log = structlog.get_logger("facewarden.sources.amqp_jobs")

SCHEMA_V1 = "facewarden.job/1"
HDR_REASON = "x-facewarden-reason"
HDR_REASON_MESSAGE = "x-facewarden-reason-message"
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


# -- the message schema -----------------------------------------------------------------


class StoredInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    store: str = Field(min_length=1, max_length=200)
    key: str = Field(min_length=1, max_length=1024)


class InlineInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: The image, standard base64 (RFC 4648, padding optional).
    data: str = Field(min_length=4)
    filename: str = Field("image.jpg", min_length=1, max_length=255)
    content_type: str | None = None


class JobMessageV1(BaseModel):
    """``facewarden.job/1``; unknown fields are errors so that typos are caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["facewarden.job/1"] = Field(alias="schema")
    input: StoredInput | InlineInput
    handler: str | None = Field(None, min_length=1, max_length=64)
    params: dict[str, Any] | None = None
    target: str | None = Field(None, min_length=1, max_length=200)
    target_prefix: str | None = Field(None, max_length=512)
    job_id: str | None = None
    correlation_id: str | None = Field(None, max_length=200)
    reply_to: str | None = Field(None, max_length=255)

    @model_validator(mode="after")
    def _check(self) -> JobMessageV1:
        if self.job_id is not None and not _HEX32.match(self.job_id):
            raise ValueError("job_id: must be 32 lowercase hex characters")
        return self


class InvalidMessage(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def parse_message(
    body: bytes,
    props: Any = None,
    *,
    stores: set[str],
    handlers_allowed: list[str] | None = None,
    max_inline_bytes: int = 20 * 1024 * 1024,
) -> tuple[JobMessageV1, bytes | None]:
    """Validates a message; returns it and the decoded inline image (if any). Raises
    ``InvalidMessage(code, sentence)`` for anything that can never succeed."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage("message.json", "the body is not valid UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise InvalidMessage("message.json", "the body must be a JSON object")
    schema = doc.get("schema")
    if schema != SCHEMA_V1:
        raise InvalidMessage(
            "message.schema",
            f"unsupported schema {schema!r}; this version accepts {SCHEMA_V1!r}",
        )
    try:
        msg = JobMessageV1.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p not in ("StoredInput", "InlineInput"))
        raise InvalidMessage(
            "message.invalid", f"{loc or 'message'}: {err['msg'].removeprefix('Value error, ')}"
        ) from None
    image: bytes | None = None
    if isinstance(msg.input, StoredInput):
        _check_key(msg.input.key)
        if msg.input.store not in stores:
            raise InvalidMessage(
                "message.store", f"input.store {msg.input.store!r} is not a store this source reads"
            )
    else:
        if len(msg.input.data) > (max_inline_bytes * 4) // 3 + 8:
            raise InvalidMessage(
                "message.too_large", f"inline image above {max_inline_bytes} bytes"
            )
        try:
            image = base64.b64decode(
                msg.input.data + "=" * (-len(msg.input.data) % 4), validate=True
            )
        except (binascii.Error, ValueError):
            raise InvalidMessage("message.base64", "input.data is not valid base64") from None
        if not image:
            raise InvalidMessage("message.base64", "input.data decodes to nothing")
        _check_key(posixpath.basename(msg.input.filename.replace("\\", "/")) or "x")
    if msg.handler is not None:
        if handlers_allowed and msg.handler not in handlers_allowed:
            raise InvalidMessage("message.handler", f"handler {msg.handler!r} is not allowed here")
        from facewarden.handlers.video import handler_for
        from facewarden.video.media import media_of_name

        name = msg.input.key if isinstance(msg.input, StoredInput) else msg.input.filename
        try:
            handler = handler_for(msg.handler, media_of_name(name))
            if msg.params:
                handler.validate_params(msg.params)
        except FacewardenError as err:
            raise InvalidMessage(err.code, err.message) from None
    return msg, image


def _check_key(key: str) -> str:
    try:
        return safe_key(key)
    except UnsafeKey as err:
        raise InvalidMessage("key.unsafe", err.message) from None


# -- the source -------------------------------------------------------------------------


class AmqpJobsSource:
    def __init__(self, cfg: Any, ctx: SourceContext):
        self.opts: AmqpJobsOptions = parse_options(cfg, ctx, AmqpJobsOptions)
        self.name = self.opts.name
        self.ctx = ctx
        default_url = None
        with contextlib.suppress(AttributeError):
            default_url = ctx.settings.queue.rabbitmq.url
        self.url = self.opts.url or default_url or "amqp://guest:guest@127.0.0.1:5672/%2F"
        self.dead_letter_queue = self.opts.dead_letter_queue or f"{self.opts.queue}.dead"
        self.stores = set(self.opts.stores or ctx.stores)
        self._emit: Emit | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()

    # -- Source protocol -------------------------------------------------------------

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"amqp-jobs:{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._connected.clear()

    def ready(self) -> bool:
        return self._connected.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- consumer --------------------------------------------------------------------

    def declare(self, ch: Any) -> None:
        o = self.opts
        ch.exchange_declare(o.dead_letter_exchange, "direct", durable=True)
        ch.queue_declare(
            o.queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": o.delivery_limit,
                "x-dead-letter-exchange": o.dead_letter_exchange,
                "x-dead-letter-routing-key": o.queue,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        ch.queue_declare(self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(self.dead_letter_queue, o.dead_letter_exchange, routing_key=o.queue)
        if o.exchange:
            ch.exchange_declare(o.exchange, "topic", durable=True)
            for key in o.binding_keys:
                ch.queue_bind(o.queue, o.exchange, routing_key=key)

    def _run(self) -> None:
        backoff = Backoff(base=0.2, cap=30.0)
        while not self._stop.is_set():
            conn = None
            try:
                conn = amqp.connect(self.url, heartbeat=self.opts.heartbeat, role=f"source {self.name}")
                ch = conn.channel()
                ch.confirm_delivery()
                self.declare(ch)
                ch.basic_qos(prefetch_count=self.opts.prefetch)
                self._connected.set()
                if backoff.failures:
                    log.info("amqp_jobs.reconnected", source=self.name,
                             after_failures=backoff.failures)
                backoff.reset()
                for method, props, body in ch.consume(self.opts.queue, inactivity_timeout=0.5):
                    if self._stop.is_set():
                        break
                    if method is None:
                        continue
                    self._handle(ch, method, props, body)
                with contextlib.suppress(Exception):
                    ch.cancel()
            except (pex.AMQPError, OSError) as exc:
                self._connected.clear()
                delay = backoff.next()
                log.warning(
                    "amqp_jobs.connection_lost",
                    source=self.name,
                    error=type(exc).__name__,
                    retry_in=round(delay, 2),
                )
                self._stop.wait(delay)
            finally:
                self._connected.clear()
                if conn is not None and conn.is_open:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _handle(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        try:
            event = self.to_event(body, props)
        except InvalidMessage as bad:
            self._dead_letter(ch, method, props, body, bad.code, bad.message)
            return
        except FacewardenError as err:  # the raw store failed: transient, try again later
            log.warning("amqp_jobs.store_failed", source=self.name, code=err.code)
            metrics.AMQP_MESSAGES.labels(source=self.name, result="failed").inc()
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        emit = self._emit
        assert emit is not None
        try:
            result = emit(event)
        except FacewardenError as err:
            # Queue unavailable: requeue; the quorum delivery limit bounds the attempts.
            log.warning("amqp_jobs.emit_failed", source=self.name, code=err.code)
            metrics.AMQP_MESSAGES.labels(source=self.name, result="failed").inc()
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        if result is None:
            self._dead_letter(
                ch, method, props, body, "route.none", "no route of this daemon takes this message"
            )
            return
        ch.basic_ack(method.delivery_tag)
        metrics.AMQP_MESSAGES.labels(source=self.name, result="accepted").inc()
        metrics.EVENTS.labels(source=self.name).inc()
        if props is not None and props.timestamp:
            metrics.SOURCE_LAG_SECONDS.labels(source=self.name).set(
                max(0.0, time.time() - props.timestamp)
            )
        log.info(
            "amqp_jobs.accepted",
            source=self.name,
            job_id=result if isinstance(result, str) else None,
        )

    def to_event(self, body: bytes, props: Any = None) -> Event:
        """Message -> Event (writing an inline image to the raw store first)."""
        msg, image = parse_message(
            body,
            props,
            stores=self.stores,
            handlers_allowed=self.opts.handlers or None,
            max_inline_bytes=self.opts.max_inline_bytes,
        )
        if msg.target is not None and self.ctx.stores and msg.target not in self.ctx.stores:
            raise InvalidMessage(
                "message.target", f"target {msg.target!r} is not a configured store"
            )
        hints: dict[str, Any] = {}
        for key in ("handler", "params", "target", "target_prefix", "job_id"):
            value = getattr(msg, key)
            if value is not None:
                hints[key] = value
        corr = msg.correlation_id or (getattr(props, "correlation_id", None) if props else None)
        reply = msg.reply_to or (getattr(props, "reply_to", None) if props else None)
        if corr:
            hints["correlation_id"] = str(corr)
        if reply:
            hints["reply_to"] = str(reply)
        if isinstance(msg.input, StoredInput):
            return Event(
                store=msg.input.store, key=safe_key(msg.input.key), source=self.name, hints=hints
            )
        if self.opts.raw_store is None:
            raise InvalidMessage(
                "message.inline", "this source takes no inline images (no raw_store)"
            )
        name = safe_key(posixpath.basename(msg.input.filename.replace("\\", "/")))
        folder = msg.job_id or uuid.uuid4().hex
        key = safe_key(f"{self.opts.inline_prefix.strip('/')}/{folder}/{name}")
        store = self.ctx.stores[self.opts.raw_store]
        store.put(
            key,
            image or b"",
            content_type=msg.input.content_type or "application/octet-stream",
            metadata={"facewarden-source": self.name},
        )
        return Event(store=self.opts.raw_store, key=key, source=self.name, hints=hints)

    def _dead_letter(
        self, ch: Any, method: Any, props: Any, body: bytes, code: str, message: str
    ) -> None:
        log.warning("amqp_jobs.invalid", source=self.name, code=code, reason=message[:200])
        headers = dict(getattr(props, "headers", None) or {})
        headers[HDR_REASON] = code
        headers[HDR_REASON_MESSAGE] = message[:1000]
        out = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers,
            content_type=getattr(props, "content_type", None),
            correlation_id=getattr(props, "correlation_id", None),
            reply_to=getattr(props, "reply_to", None),
            message_id=getattr(props, "message_id", None),
        )
        # Confirmed copy first, ack second: the message is never lost, never requeued.
        ch.basic_publish(self.opts.dead_letter_exchange, self.opts.queue, body, out, mandatory=True)
        ch.basic_ack(method.delivery_tag)
        metrics.AMQP_MESSAGES.labels(source=self.name, result="invalid").inc()
        metrics.DEAD_LETTERS.labels(reason=code).inc()


def _factory(cfg: Any, ctx: SourceContext) -> AmqpJobsSource:
    return AmqpJobsSource(cfg, ctx)


register_source("amqp-jobs", _factory)

__all__ = ["SCHEMA_V1", "AmqpJobsSource", "InvalidMessage", "JobMessageV1", "parse_message"]
