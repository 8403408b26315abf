"""RabbitMQQueue against a real broker (127.0.0.1:5672, started when down).

The broker-restart test runs its own private node (see fixtures_rabbit.private_node) so
that stopping it cannot break other suites sharing the machine's broker.
"""

from __future__ import annotations

import threading
import time

import fixtures_rabbit
import pika
import pytest
from fixtures_rabbit import get_raw, unique_cfg

from facewarden.daemon.jobs import Job
from facewarden.daemon.queues.rabbitmq import HDR_REASON, RabbitMQQueue

pytestmark = pytest.mark.rabbitmq
rabbit_url = fixtures_rabbit.rabbit_url
rabbit_cfg = fixtures_rabbit.rabbit_cfg
private_node = fixtures_rabbit.private_node


def _job(i: int = 0) -> Job:
    return Job(
        handler="anonymize",
        params={"mode": "blur"},
        store="raw",
        key=f"a/{i}.jpg",
        target="out",
        hints={"correlation_id": f"c{i}"},
    )


def test_put_get_ack_round_trip(rabbit_cfg):
    q = RabbitMQQueue(rabbit_cfg)
    try:
        job = _job()
        assert q.put(job) is True
        assert q.depth() == 1
        lease = q.get("w1", timeout=5)
        assert lease is not None
        assert lease.job.id == job.id and lease.job.key == "a/0.jpg"
        assert lease.job.hints == {"correlation_id": "c0"}
        assert lease.delivery == 1
        q.ack(lease)
        assert q.get("w1", timeout=0.5) is None
        assert q.depth() == 0
    finally:
        q.close()


def test_unacked_job_is_redelivered_when_worker_connection_dies(rabbit_cfg):
    q1 = RabbitMQQueue(rabbit_cfg)
    q1.put(_job())
    lease = q1.get("w1", timeout=5)
    assert lease is not None
    q1.close()  # worker "dies" before ack
    q2 = RabbitMQQueue(rabbit_cfg)
    try:
        again = q2.get("w2", timeout=5)
        assert again is not None and again.job.id == lease.job.id
        assert again.delivery == 2
        q2.ack(again)
        assert q2.get("w2", timeout=0.3) is None
        # An ack through a connection that is gone must not raise nor ack anything else.
        q1.ack(lease)
    finally:
        q2.close()


def test_retry_republishes_with_attempts_and_delay(rabbit_cfg):
    q = RabbitMQQueue(rabbit_cfg)
    try:
        job = _job()
        q.put(job)
        lease = q.get("w", timeout=5)
        q.retry(lease, reason={"code": "processing.failed", "message": "detector crashed"}, delay=1)
        # Not due yet: the copy waits in the delay queue, the old delivery is acked.
        assert q.get("w", timeout=0.3) is None
        again = q.get("w", timeout=10)
        assert again is not None and again.job.id == job.id
        assert again.job.attempts == 1
        assert again.job.last_error == {"code": "processing.failed", "message": "detector crashed"}
        assert again.delivery == 2
        q.ack(again)
        assert q.get("w", timeout=0.3) is None
    finally:
        q.close()


def test_poison_job_hits_delivery_limit_and_lands_in_dead_letter_queue(rabbit_cfg):
    # delivery_limit=2 in the fixture: the third crash sends it to the DLQ.
    q = RabbitMQQueue(rabbit_cfg)
    q.put(_job())
    dlq = q.dead_letter_queue
    q.close()
    for _ in range(3):
        w = RabbitMQQueue(rabbit_cfg)
        lease = w.get("crashy", timeout=5)
        assert lease is not None
        w.close()  # crash without ack
    w = RabbitMQQueue(rabbit_cfg)
    assert w.get("w", timeout=0.5) is None
    w.close()
    got = get_raw(rabbit_cfg.url, dlq)
    assert got is not None
    props, body = got
    assert Job.from_json(body).key == "a/0.jpg"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"


def test_dead_letter_and_malformed_messages_carry_a_reason(rabbit_cfg):
    q = RabbitMQQueue(rabbit_cfg)
    try:
        q.put(_job(1))
        lease = q.get("w", timeout=5)
        q.dead_letter(lease, reason={"code": "input.rejected", "message": "not an image"})
        conn = pika.BlockingConnection(pika.URLParameters(rabbit_cfg.url))
        conn.channel().basic_publish(
            rabbit_cfg.exchange,
            rabbit_cfg.queue,
            b"{not json",
            pika.BasicProperties(delivery_mode=2),
        )
        conn.close()
        assert q.get("w", timeout=1) is None  # the garbage is never handed to a worker
        first = get_raw(rabbit_cfg.url, q.dead_letter_queue)
        second = get_raw(rabbit_cfg.url, q.dead_letter_queue)
        assert first is not None and second is not None
        assert first[0].headers[HDR_REASON] == "input.rejected"
        assert second[0].headers[HDR_REASON] == "job.malformed"
        assert second[1] == b"{not json"
    finally:
        q.close()


def test_dedup_with_state_dir_and_without(rabbit_cfg, tmp_path):
    q = RabbitMQQueue(rabbit_cfg, state_dir=tmp_path)
    try:
        assert q.put(_job(), dedup="raw:a/0.jpg@v1") is True
        assert q.put(_job(), dedup="raw:a/0.jpg@v1") is False
        assert q.put(_job(), dedup="raw:a/0.jpg@v2") is True
    finally:
        q.close()
    again = RabbitMQQueue(rabbit_cfg, state_dir=tmp_path)  # survives a restart
    try:
        assert again.put(_job(), dedup="raw:a/0.jpg@v1") is False
        assert again.depth() == 2
        known = _job()
        again.put(known)
        assert again.job_state(known.id) == "queued"  # for GET /jobs/{id}
        assert again.job_state("f" * 32) is None
        assert again.depth() == 3
    finally:
        again.close()
    nodedup = RabbitMQQueue(rabbit_cfg)
    try:
        assert nodedup.put(_job(), dedup="x") is True
        assert nodedup.put(_job(), dedup="x") is True
    finally:
        nodedup.close()


@pytest.mark.slow
def test_broker_restart_mid_stream_loses_nothing(private_node):
    cfg = unique_cfg(private_node.url, reconnect_max_delay=0.5, heartbeat=5)
    producer = RabbitMQQueue(cfg)
    consumer = RabbitMQQueue(cfg)
    sent: list[str] = []
    done: set[str] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(60):
                job = _job(i)
                producer.put(job)  # returns only once confirmed, reconnecting as needed
                sent.append(job.id)
                time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)

    def consume() -> None:
        while not stop.is_set():
            lease = consumer.get("w", timeout=0.5)
            if lease is not None:
                done.add(lease.job.id)
                consumer.ack(lease)

    tp = threading.Thread(target=produce)
    tc = threading.Thread(target=consume)
    tp.start()
    tc.start()
    while len(sent) < 15:
        time.sleep(0.05)
    private_node.ctl("stop_app")
    time.sleep(1.5)
    private_node.ctl("start_app")
    tp.join(timeout=90)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not set(sent) <= done:
        time.sleep(0.2)
    stop.set()
    tc.join(timeout=10)
    producer.close()
    consumer.close()
    assert not errors
    assert len(sent) == 60
    missing = set(sent) - done
    assert not missing, f"{len(missing)} confirmed jobs lost across the broker restart"


@pytest.mark.slow
def test_a_long_job_keeps_its_lease_across_heartbeats(rabbit_url):
    # heartbeat=1 s: without the keep-alive thread the broker would drop the connection
    # (and requeue the job) after ~2 s of a worker busy in a long job.
    cfg = unique_cfg(rabbit_url, heartbeat=1)
    q = RabbitMQQueue(cfg)
    try:
        q.put(_job())
        lease = q.get("w", timeout=5)
        assert lease is not None
        time.sleep(4.5)  # "processing"
        q.ack(lease)
        other = RabbitMQQueue(cfg)
        try:
            assert other.get("w2", timeout=1) is None  # acked, not redelivered
        finally:
            other.close()
    finally:
        q.close()
        fixtures_rabbit.delete_topology(rabbit_url, cfg)
