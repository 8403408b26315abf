"""RabbitMQ job queue: the scale-out backend behind the ``Queue`` seam.

Topology (declared idempotently by every process that opens the queue):

- ``exchange`` (direct, durable) --routing key = ``queue``--> ``queue``: a durable
  **quorum** queue (replicated, poison-message aware) with ``x-delivery-limit`` and
  ``x-dead-letter-exchange``; dead-lettering is ``at-least-once`` so a poison job is never
  dropped on its way to the dead-letter queue.
- ``dead_letter_exchange`` (direct) --``queue``--> ``dead_letter_queue`` (quorum): poison
  jobs. Jobs the broker gave up on carry ``x-death[0].reason = delivery_limit``; jobs we
  dead-letter ourselves carry ``x-facewarden-reason`` (code) and
  ``x-facewarden-reason-message``.
- ``<queue>.delay.<ms>``: one quorum queue per retry delay with a queue TTL that
  dead-letters back into ``queue``. A queue-wide TTL (not per-message) avoids
  head-of-line blocking; unused delay queues expire after a minute.

Why these choices:

- ``put`` publishes with publisher confirms and returns only once the broker has the job
  on disk (quorum: on a majority). While the broker is away it reconnects with backoff for
  up to ``publish_timeout`` seconds, then raises a retryable error.
- ``retry`` publishes the new copy (attempts + 1, ``last_error``) with confirms BEFORE it
  acks the old delivery: a crash in between yields a duplicate, never a loss. Duplicates
  are harmless because results are idempotent (audit index).
- Nothing acks a job except ``ack``/``retry``/``dead_letter``, which the worker calls after
  the result and audit record are durable.
- ``Lease.delivery`` = deliveries before the last ``retry`` (header
  ``x-facewarden-deliveries``) + the broker's ``x-delivery-count`` + 1, so a job that
  alternates between crashes and retries is still counted in full.
- RabbitMQ has no dedup. With a ``state_dir``, accepted dedup strings are remembered in a
  small local SQLite (``rabbitmq-dedup.sqlite3``) for ``dedup_days``; without one every job
  is accepted. Either way a duplicate costs only a skipped job: the worker finds the
  input's idempotency key in the audit index.
- pika's BlockingConnection is not thread-safe: each process (fork-aware) has its own
  connections, every use is serialised by a lock, and a keep-alive thread services
  heartbeats while a worker is busy with a long job.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pika
import pika.exceptions as pex
import structlog

from facewarden.config.schema import RabbitMQConfig
from facewarden.daemon import amqp, metrics
from facewarden.daemon.backoff import Backoff
from facewarden.daemon.jobs import Job
from facewarden.daemon.queues.base import QUEUES, Lease, Queue
from facewarden.errors import ConfigError, QueueUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Errors after which the connection is dropped and rebuilt.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pex.AMQPConnectionError,
    pex.ChannelClosed,
    pex.ChannelWrongStateError,
    pex.ConnectionWrongStateError,
    pex.StreamLostError,
    ConnectionError,
    OSError,
)

HDR_DELIVERIES = "x-facewarden-deliveries"
HDR_REASON = "x-facewarden-reason"
HDR_REASON_MESSAGE = "x-facewarden-reason-message"
DELAY_QUEUE_EXPIRES_MS = 60_000
#: Depth queries (/metrics, the monitor's backlog) give up quickly while the broker is
#: away: a scrape must not hang for the publish timeout (issue 16).
DEPTH_TIMEOUT = 2.0


__all__ = ["CONNECTION_ERRORS", "QueueUnavailable", "RabbitMQQueue"]


@dataclass(frozen=True, slots=True)
class DeliveryToken:
    """Identifies a delivery on one consumer connection; acks on a stale connection are
    meaningless (the broker has already requeued the message)."""

    generation: int
    delivery_tag: int
    pid: int


def connection_parameters(cfg: RabbitMQConfig, role: str = "") -> pika.URLParameters:
    return amqp.connection_parameters(cfg.url, heartbeat=cfg.heartbeat, role=role)


def main_queue_arguments(cfg: RabbitMQConfig) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": cfg.delivery_limit,
        "x-dead-letter-exchange": cfg.dead_letter_exchange,
        "x-dead-letter-routing-key": cfg.queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


class _Dedup:
    """Accepted dedup strings, so a source that sees the same object twice queues it once;
    and the ids of jobs this process queued, so GET /jobs/{id} can say "queued" (RabbitMQ
    cannot look a message up by id)."""

    def __init__(self, path: Path, ttl: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS queued (id TEXT PRIMARY KEY, at REAL NOT NULL)"
        )
        self._ttl = ttl
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def claim(self, key: str) -> bool:
        now = time.time()
        with self._lock:
            if now >= self._next_prune:
                self._db.execute("DELETE FROM dedup WHERE at < ?", (now - self._ttl,))
                self._db.execute("DELETE FROM queued WHERE at < ?", (now - self._ttl,))
                self._next_prune = now + 3600
            cur = self._db.execute("INSERT OR IGNORE INTO dedup(key, at) VALUES (?, ?)", (key, now))
            return cur.rowcount == 1

    def release(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM dedup WHERE key = ?", (key,))

    def note_queued(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO queued(id, at) VALUES (?, ?)", (job_id, time.time())
            )

    def was_queued(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM queued WHERE id = ?", (job_id,)).fetchone()
            return row is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Link:
    """One BlockingConnection + confirm-mode channel, rebuilt on demand after errors."""

    def __init__(self, owner: RabbitMQQueue, role: str):
        self.owner = owner
        self.role = role
        self.lock = threading.RLock()
        self.conn: pika.BlockingConnection | None = None
        self.ch: Any = None
        self.generation = 0
        self.declared_delays: set[int] = set()
        self._backoff = Backoff(base=0.2, cap=owner.cfg.reconnect_max_delay)

    @property
    def failures(self) -> int:
        return self._backoff.failures

    def channel(self) -> Any:
        if self.conn is None or self.conn.is_closed or self.ch is None or self.ch.is_closed:
            self.drop()
            conn = amqp.open_connection(connection_parameters(self.owner.cfg, self.role))
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                self.owner._declare(ch)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            self.conn, self.ch = conn, ch
            self.generation += 1
            self.declared_delays.clear()
            if self.failures:
                log.info("rabbitmq.reconnected", role=self.role, after_failures=self.failures)
            self._backoff.reset()
        return self.ch

    def drop(self) -> None:
        conn, self.conn, self.ch = self.conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()

    def backoff(self, exc: BaseException, deadline: float | None = None) -> None:
        """Drops the connection and sleeps (exponentially longer) before the next try."""
        self.drop()
        delay = self._backoff.next()
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        log.warning(
            "rabbitmq.connection_lost",
            role=self.role,
            error=type(exc).__name__,
            detail=str(exc)[:200],
            retry_in=round(delay, 2),
        )
        time.sleep(delay)

    def keepalive(self) -> None:
        if not self.lock.acquire(blocking=False):
            return  # someone is using the connection, which services heartbeats anyway
        try:
            if self.conn is not None and self.conn.is_open:
                self.conn.process_data_events(0)
        except CONNECTION_ERRORS:
            self.drop()
        finally:
            self.lock.release()


class RabbitMQQueue(Queue):
    """``Queue`` over a RabbitMQ quorum queue. Safe to share between threads of one
    process; a forked child transparently opens its own connections."""

    def __init__(self, cfg: RabbitMQConfig, *, state_dir: Path | str | None = None):
        self.cfg = cfg
        self.dead_letter_queue = cfg.dead_letter_queue or f"{cfg.queue}.dead"
        self._dedup = (
            _Dedup(Path(state_dir) / "rabbitmq-dedup.sqlite3", cfg.dedup_days * 86400)
            if state_dir is not None
            else None
        )
        self._closed = False
        self._reset_process_state()

    # -- process / connection management -------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._pub = _Link(self, "publish")
        self._con = _Link(self, "consume")
        self._buffer: deque[tuple[Any, Any, bytes]] = deque()
        self._consumer_generation = -1
        self._stop_keepalive = threading.Event()
        self._keepalive_thread: threading.Thread | None = None

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            # Connections (sockets) inherited across fork belong to the parent: never use them.
            self._reset_process_state()

    def _ensure_keepalive(self) -> None:
        if self._keepalive_thread is None or not self._keepalive_thread.is_alive():
            interval = max(1.0, (self.cfg.heartbeat or 30) / 3)

            def run() -> None:
                while not self._stop_keepalive.wait(interval):
                    self._pub.keepalive()
                    self._con.keepalive()

            self._keepalive_thread = threading.Thread(
                target=run, name="rabbitmq-keepalive", daemon=True
            )
            self._keepalive_thread.start()

    def _declare(self, ch: Any) -> None:
        cfg = self.cfg
        try:
            ch.exchange_declare(cfg.exchange, "direct", durable=True)
            ch.exchange_declare(cfg.dead_letter_exchange, "direct", durable=True)
            ch.queue_declare(cfg.queue, durable=True, arguments=main_queue_arguments(cfg))
            ch.queue_bind(cfg.queue, cfg.exchange, routing_key=cfg.queue)
            ch.queue_declare(
                self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            ch.queue_bind(self.dead_letter_queue, cfg.dead_letter_exchange, routing_key=cfg.queue)
        except pex.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:  # PRECONDITION_FAILED: exists with other arguments
                raise ConfigError(
                    "config.invalid",
                    f"queue.rabbitmq: the broker already has {cfg.queue!r} or its exchanges with "
                    f"different settings ({exc.reply_text}); delete them or choose another "
                    "queue.rabbitmq.queue name",
                ) from exc
            raise

    def _declare_delay(self, link: _Link, ms: int) -> str:
        name = f"{self.cfg.queue}.delay.{ms}"
        if ms not in link.declared_delays:
            link.ch.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": ms,
                    "x-expires": ms + DELAY_QUEUE_EXPIRES_MS,
                    "x-dead-letter-exchange": self.cfg.exchange,
                    "x-dead-letter-routing-key": self.cfg.queue,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            link.declared_delays.add(ms)
        return name

    def _with_publisher(self, op: Callable[[Any], T], what: str, timeout: float | None = None) -> T:
        """Runs ``op(channel)`` until it succeeds, reconnecting with backoff, for at most
        ``timeout`` (default ``publish_timeout``) seconds."""
        self._check_pid()
        self._ensure_keepalive()
        limit = self.cfg.publish_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            # A short query (timeout given) does not queue behind a publish that is
            # itself waiting out an outage while holding the connection.
            wait = max(0.01, deadline - time.monotonic()) if timeout is not None else -1
            if not self._pub.lock.acquire(timeout=wait):
                raise QueueUnavailable(message=f"RabbitMQ: the {what} found the connection busy "
                                       f"for {limit:.0f} s (the broker is slow or away)")
            try:
                return op(self._pub.channel())
            except ConfigError:
                raise
            except (pex.NackError, pex.UnroutableError, *CONNECTION_ERRORS) as exc:
                if time.monotonic() >= deadline:
                    raise QueueUnavailable(
                        message=f"RabbitMQ did not confirm the {what} within "
                        f"{limit:.0f} s ({type(exc).__name__})"
                    ) from exc
                self._pub.backoff(exc, deadline)
            finally:
                self._pub.lock.release()

    def _publish(
        self,
        job: Job,
        *,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any] | None = None,
        delay_ms: int = 0,
    ) -> None:
        body = job.to_json().encode("utf-8")
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            message_id=job.id,
            timestamp=int(time.time()),
            headers=headers or {},
            type=f"facewarden.job/{job.handler}",
        )

        def op(ch: Any) -> None:
            ex, rk = exchange, routing_key
            if delay_ms:
                ex, rk = "", self._declare_delay(self._pub, delay_ms)
            ch.basic_publish(ex, rk, body, props, mandatory=True)

        self._with_publisher(op, "job")

    # -- Queue protocol ----------------------------------------------------------------

    def put(self, job: Job, *, dedup: str | None = None) -> bool:
        if dedup is not None and self._dedup is not None and not self._dedup.claim(dedup):
            log.debug("queue.duplicate", job=job.id, key=job.key)
            return False
        try:
            self._publish(job, exchange=self.cfg.exchange, routing_key=self.cfg.queue)
        except BaseException:
            if dedup is not None and self._dedup is not None:
                self._dedup.release(dedup)  # not accepted: a later put must be able to succeed
            raise
        if self._dedup is not None:
            self._dedup.note_queued(job.id)
        return True

    def job_state(self, job_id: str) -> str | None:
        """ "queued" for a job this process (the daemon) put and nobody has finished yet as
        far as we can tell (the caller checks the audit index first); else None. RabbitMQ
        does not tell which consumer holds a message, so "leased" is never reported."""
        if self._dedup is not None and self._dedup.was_queued(job_id):
            return "queued"
        return None

    def get(self, worker: str, timeout: float) -> Lease | None:
        self._check_pid()
        self._ensure_keepalive()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._con.lock:
                try:
                    ch = self._con.channel()
                    if self._consumer_generation != self._con.generation:
                        self._buffer.clear()  # deliveries of a dead connection are requeued
                        ch.basic_qos(prefetch_count=self.cfg.prefetch)
                        ch.basic_consume(self.cfg.queue, self._on_message, auto_ack=False)
                        self._consumer_generation = self._con.generation
                    if not self._buffer:
                        remaining = deadline - time.monotonic()
                        self._con.conn.process_data_events(
                            time_limit=max(0.0, min(0.25, remaining))
                        )
                    while self._buffer:
                        lease = self._lease(*self._buffer.popleft(), worker=worker)
                        if lease is not None:
                            return lease
                except ConfigError:
                    raise
                except CONNECTION_ERRORS as exc:
                    self._consumer_generation = -1
                    if time.monotonic() >= deadline:
                        self._con.drop()
                        return None
                    self._con.backoff(exc, deadline)
            if time.monotonic() >= deadline:
                return None

    def _on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self._buffer.append((method, props, body))

    def _lease(self, method: Any, props: Any, body: bytes, *, worker: str) -> Lease | None:
        headers = dict(props.headers or {})
        token = DeliveryToken(self._con.generation, method.delivery_tag, self._pid)
        try:
            job = Job.from_json(body)
        except (ValueError, TypeError) as exc:
            # Not a job at all: retrying can never help, dead-letter it with the reason.
            log.warning(
                "queue.malformed_job", delivery_tag=method.delivery_tag, error=str(exc)[:200]
            )
            reason = {"code": "job.malformed", "message": f"undecodable job message: {exc}"[:500]}
            self._dead_letter_raw(body, props, token, reason)
            return None
        prior = _int(headers.get(HDR_DELIVERIES))
        delivery = prior + _int(headers.get("x-delivery-count")) + 1
        log.debug("queue.leased", job=job.id, worker=worker, delivery=delivery)
        return Lease(job=job, token=token, delivery=delivery)

    def _stale(self, token: DeliveryToken) -> bool:
        self._check_pid()
        return (
            token.pid != self._pid
            or token.generation != self._con.generation
            or self._con.ch is None
        )

    def ack(self, lease: Lease) -> None:
        token: DeliveryToken = lease.token  # type: ignore[assignment]
        with self._con.lock:
            if self._stale(token):
                # The connection that delivered it is gone, so the broker has requeued the
                # job; its next run finds the result in the audit index and skips it.
                log.warning("queue.ack_stale", job=lease.job.id)
                return
            try:
                self._con.ch.basic_ack(token.delivery_tag)
            except CONNECTION_ERRORS as exc:
                log.warning("queue.ack_lost", job=lease.job.id, error=type(exc).__name__)
                self._consumer_generation = -1
                self._con.drop()

    def retry(self, lease: Lease, *, reason: dict[str, str], delay: float) -> None:
        job = replace(
            lease.job,
            attempts=lease.job.attempts + 1,
            last_error=dict(reason),
            hints=dict(lease.job.hints),
        )
        delay_ms = math.ceil(max(0.0, delay)) * 1000  # whole seconds: few delay queues
        self._publish(
            job,
            exchange=self.cfg.exchange,
            routing_key=self.cfg.queue,
            headers={HDR_DELIVERIES: lease.delivery},
            delay_ms=delay_ms,
        )
        metrics.RETRIES.labels(reason=str(reason.get("code", "unknown"))).inc()
        log.info(
            "queue.retry",
            job=job.id,
            attempts=job.attempts,
            delay_s=delay_ms / 1000,
            reason=reason.get("code"),
        )
        self.ack(lease)  # only now: the new copy is confirmed

    def dead_letter(self, lease: Lease, *, reason: dict[str, str]) -> None:
        """Moves the job to the dead-letter queue with ``x-facewarden-reason`` headers."""
        job = replace(lease.job, last_error=dict(reason))
        self._publish(
            job,
            exchange=self.cfg.dead_letter_exchange,
            routing_key=self.cfg.queue,
            headers=_reason_headers(reason, lease.delivery),
        )
        log.warning("queue.dead_lettered", job=job.id, reason=reason.get("code"))
        metrics.DEAD_LETTERS.labels(reason=str(reason.get("code", "unknown"))).inc()
        self.ack(lease)

    def _dead_letter_raw(
        self, body: bytes, props: Any, token: DeliveryToken, reason: dict[str, str]
    ) -> None:
        # Called with the consumer lock held, from get(); publishing uses the other link.
        metrics.DEAD_LETTERS.labels(reason=str(reason.get("code", "unknown"))).inc()
        headers = {**dict(props.headers or {}), **_reason_headers(reason, 0)}
        out = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers,
            content_type=props.content_type,
            message_id=props.message_id,
        )
        self._with_publisher(
            lambda ch: ch.basic_publish(
                self.cfg.dead_letter_exchange, self.cfg.queue, body, out, mandatory=True
            ),
            "dead letter",
        )
        self._con.ch.basic_ack(token.delivery_tag)

    def depth(self) -> int:
        """Jobs ready for a worker (not counting leased ones or those waiting to retry)."""
        return self._with_publisher(
            lambda ch: ch.queue_declare(self.cfg.queue, passive=True).method.message_count,
            "depth query",
            DEPTH_TIMEOUT,
        )

    def dead_letter_depth(self) -> int:
        return self._with_publisher(
            lambda ch: ch.queue_declare(self.dead_letter_queue, passive=True).method.message_count,
            "depth query",
            DEPTH_TIMEOUT,
        )

    def reachable(self) -> bool:
        """For /readyz: can we talk to the broker right now (one quick try)?"""
        self._check_pid()
        with self._pub.lock:
            try:
                self._pub.channel().queue_declare(self.cfg.queue, passive=True)
                return True
            except Exception:  # any failure means "not ready"; never raise from a probe
                self._pub.drop()
                return False

    def close(self) -> None:
        """Closes connections; unacked deliveries go back to the queue at once."""
        if self._closed:
            return
        self._closed = True
        self._stop_keepalive.set()
        if os.getpid() == self._pid:
            for link in (self._con, self._pub):
                with link.lock:
                    link.drop()
        if self._dedup is not None:
            self._dedup.close()


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _reason_headers(reason: dict[str, str], deliveries: int) -> dict[str, Any]:
    return {
        HDR_REASON: str(reason.get("code", "unknown"))[:200],
        HDR_REASON_MESSAGE: str(reason.get("message", ""))[:1000],
        HDR_DELIVERIES: deliveries,
    }


QUEUES.register("rabbitmq", lambda settings: RabbitMQQueue(settings.queue.rabbitmq, state_dir=Path(settings.state_dir)))
