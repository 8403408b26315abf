"""S3 event notifications delivered to an SQS queue (AWS, or anything speaking SQS).

Long polling keeps the request rate low while events still arrive within a second. A
message is deleted only after ``emit`` has returned for every object it names, i.e. after
the jobs are durable: if the daemon dies in between, SQS makes the message visible again
and the queue's dedup (ETag) absorbs the repeat. Messages that can never yield an event
(test events, removals, garbage, foreign buckets) are deleted at once so they do not
circle forever; SQS's own redrive policy remains the place for a dead-letter queue.
"""

from __future__ import annotations

from typing import Any

import boto3
import structlog
from botocore.config import Config as BotoConfig

from facewarden.config.sources import SqsSourceConfig as SqsOptions
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


class SqsSource(BackgroundSource):
    def __init__(self, opts: SqsOptions, buckets: BucketMap, *, client: Any = None):
        if not (opts.queue_url or opts.queue_name):
            raise ValueError("queue_url or queue_name is required")
        super().__init__()
        self.join_timeout = opts.wait_time + 15
        self.name = opts.name
        self.opts = opts
        self.buckets = buckets
        self._client = client
        self._queue_url = opts.queue_url
        self._recent = RecentEvents()

    def _sqs(self) -> Any:
        if self._client is None:
            session = boto3.session.Session(profile_name=self.opts.profile,
                                            region_name=self.opts.region)
            self._client = session.client(
                "sqs", endpoint_url=self.opts.endpoint_url,
                config=BotoConfig(read_timeout=self.opts.wait_time + 10,
                                  retries={"mode": "standard", "max_attempts": 3}))
        return self._client

    def _run(self, emit: Emit) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                sqs = self._sqs()
                if self._queue_url is None:
                    self._queue_url = sqs.get_queue_url(QueueName=self.opts.queue_name)["QueueUrl"]
                args: dict[str, Any] = {"QueueUrl": self._queue_url,
                                        "MaxNumberOfMessages": self.opts.max_messages,
                                        "WaitTimeSeconds": self.opts.wait_time}
                if self.opts.visibility_timeout is not None:
                    args["VisibilityTimeout"] = self.opts.visibility_timeout
                messages = sqs.receive_message(**args).get("Messages", [])
                self._ready = True
                backoff.reset()
            except Exception as exc:  # broker away, credentials, DNS: keep trying
                self._ready = False
                delay = backoff.next()
                log.warning("source.sqs_error", source=self.name, error=type(exc).__name__,
                            detail=str(exc)[:200], retry_in=round(delay, 2))
                self._stop.wait(delay)
                continue
            for msg in messages:
                if self._stop.is_set():
                    return  # not deleted: it comes back after its visibility timeout
                self._handle(sqs, msg, emit)

    def _handle(self, sqs: Any, msg: dict[str, Any], emit: Emit) -> None:
        events = normalize_s3_notification(msg.get("Body", ""), buckets=self.buckets,
                                           source=self.name)
        try:
            emit_all(events, emit, self._recent, accepts=self.opts.accepts)
        except Exception as exc:
            # Not deleted: SQS redelivers after the visibility timeout.
            log.error("source.emit_failed", source=self.name, error=type(exc).__name__,
                      detail=str(exc)[:200])
            return
        try:
            sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=msg["ReceiptHandle"])
        except Exception as exc:  # redelivery is harmless: dedup by ETag
            log.warning("source.sqs_delete_failed", source=self.name, error=type(exc).__name__)


def _factory(cfg: Any, ctx: SourceContext) -> SqsSource:
    opts = parse_options(SqsOptions, cfg)
    return SqsSource(opts, check_stores(opts.stores, ctx.stores, opts.name))


register_source("s3-sqs", _factory)
