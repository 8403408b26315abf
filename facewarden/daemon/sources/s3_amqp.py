"""S3 event notifications that MinIO publishes to a RabbitMQ exchange (its AMQP target).

MinIO publishes to an exchange; we own a durable queue bound to it so that events wait
for us while the daemon is down. Deliveries are acked only after ``emit`` returned for
every object in them (the jobs are durable); if emit fails the delivery is requeued, and
if we die it is redelivered — the queue's ETag dedup absorbs the repeat. Deliveries that
can never become events (removals, test events, garbage, unknown buckets) are acked and
logged. The consumer reconnects with backoff when the broker goes away.

MinIO side (``mc admin config set ALIAS notify_amqp:facewarden url=amqp://...
exchange=minio-events exchange_type=fanout durable=on``) then
``mc event add ALIAS/raw-images arn:minio:sqs::facewarden:amqp --event put``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog

from facewarden.config.sources import AmqpEventSourceConfig as AmqpEventOptions
from facewarden.daemon import amqp
from facewarden.daemon.backoff import Backoff
from facewarden.daemon.sources import BackgroundSource, Emit, SourceContext, register_source
from facewarden.daemon.sources.s3_events import (
    BucketMap,
    RecentEvents,
    check_stores,
    emit_all,
    normalize_s3_notification,
    parse_options,
)

log = structlog.get_logger(__name__)


class AmqpEventSource(BackgroundSource):
    join_timeout = 15.0

    def __init__(self, opts: AmqpEventOptions, buckets: BucketMap):
        super().__init__()
        self.name = opts.name
        self.opts = opts
        self.buckets = buckets
        self._recent = RecentEvents()

    def _declare(self, ch: Any) -> None:
        o = self.opts
        if o.declare_exchange:
            ch.exchange_declare(exchange=o.exchange, exchange_type=o.exchange_type, durable=True)
        ch.queue_declare(queue=o.queue, durable=True,
                         arguments={"x-queue-type": o.queue_type})
        ch.queue_bind(queue=o.queue, exchange=o.exchange, routing_key=o.binding_key)
        ch.basic_qos(prefetch_count=o.prefetch)

    def _run(self, emit: Emit) -> None:
        backoff = Backoff(cap=self.opts.reconnect_max_delay)
        while not self._stop.is_set():
            conn = None
            try:
                conn = amqp.connect(self.opts.url, role=f"source {self.name}")
                ch = conn.channel()
                self._declare(ch)

                def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
                    self._deliver(ch, method.delivery_tag, body, emit)

                ch.basic_consume(queue=self.opts.queue, on_message_callback=on_message,
                                 auto_ack=False)
                self._ready = True
                backoff.reset()
                log.info("source.amqp_connected", source=self.name, queue=self.opts.queue)
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.5)
            except Exception as exc:  # broker away, channel closed, bad declare
                self._ready = False
                delay = backoff.next()
                log.warning("source.amqp_error", source=self.name, error=type(exc).__name__,
                            detail=str(exc)[:200], retry_in=round(delay, 2))
                self._stop.wait(delay)
            finally:
                self._ready = False
                if conn is not None and conn.is_open:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _deliver(self, ch: Any, tag: int, body: bytes, emit: Emit) -> None:
        events = normalize_s3_notification(body, buckets=self.buckets, source=self.name)
        try:
            emit_all(events, emit, self._recent, accepts=self.opts.accepts)
        except Exception as exc:
            log.error("source.emit_failed", source=self.name, error=type(exc).__name__,
                      detail=str(exc)[:200])
            self._stop.wait(self.opts.retry_delay)
            ch.basic_nack(delivery_tag=tag, requeue=True)
            return
        ch.basic_ack(delivery_tag=tag)


def _factory(cfg: Any, ctx: SourceContext) -> AmqpEventSource:
    opts = parse_options(AmqpEventOptions, cfg)
    return AmqpEventSource(opts, check_stores(opts.stores, ctx.stores, opts.name))


register_source("s3-amqp", _factory)
