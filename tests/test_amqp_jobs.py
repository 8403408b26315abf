"""RabbitMQ job messages: schema validation, the amqp-jobs source on a real broker,
dead-lettering with reasons, inline images, and result publishing."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from pathlib import Path

import fixtures_rabbit
import pika
import pytest
from fixtures_rabbit import get_raw

from facewarden.config.schema import QueueConfig, Settings
from facewarden.daemon.jobs import Event, Job
from facewarden.daemon.results import publish_result, wants_result
from facewarden.daemon.sources import SourceContext, build_source
from facewarden.daemon.sources.amqp_jobs import InvalidMessage, parse_message
from facewarden.storage.local import LocalStore

rabbit_url = fixtures_rabbit.rabbit_url
rabbit_cfg = fixtures_rabbit.rabbit_cfg

STORES = {"raw", "docs"}


def msg(**over) -> bytes:
    doc = {"schema": "facewarden.job/1", "input": {"store": "docs", "key": "a/b.jpg"}}
    doc.update(over)
    return json.dumps(doc).encode()


# -- schema (no broker) -------------------------------------------------------------------


def test_valid_messages_parse():
    m, image = parse_message(
        msg(handler="anonymize", params={}, correlation_id="c1"), stores=STORES
    )
    assert m.input.store == "docs" and m.input.key == "a/b.jpg" and image is None
    data = base64.b64encode(b"\xff\xd8\xff fake jpeg").decode()
    m, image = parse_message(msg(input={"data": data, "filename": "x.jpg"}), stores=STORES)
    assert image == b"\xff\xd8\xff fake jpeg"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "message.json"),
        (b"[1, 2]", "message.json"),
        (json.dumps({"input": {"store": "docs", "key": "k"}}).encode(), "message.schema"),
        (msg(schema="facewarden.job/2"), "message.schema"),
        (msg(input=None), "message.invalid"),
        (msg(surprise=1), "message.invalid"),
        (msg(input={"store": "docs", "key": "../../etc/passwd"}), "key.unsafe"),
        (msg(input={"store": "elsewhere", "key": "a.jpg"}), "message.store"),
        (msg(input={"data": "%%%not base64%%%"}), "message.base64"),
        (msg(handler="does-not-exist"), "handler.unknown"),
        (msg(job_id="not-hex"), "message.invalid"),
        (msg(params=[1, 2]), "message.invalid"),
    ],
)
def test_invalid_messages_are_refused_with_a_reason(body, code):
    with pytest.raises(InvalidMessage) as info:
        parse_message(body, stores=STORES)
    assert info.value.code == code
    assert info.value.message


# -- the source on a real broker ----------------------------------------------------------


@pytest.fixture
def source_env(rabbit_url, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    stores = {
        "raw": LocalStore("raw", tmp_path / "raw"),
        "docs": LocalStore("docs", tmp_path / "docs"),
    }
    cfg = dict(
        type="amqp-jobs",
        name="requests",
        url=rabbit_url,
        queue=f"fwtest.{tag}.requests",
        dead_letter_exchange=f"fwtest.{tag}.requests.dlx",
        raw_store="raw",
        delivery_limit=2,
    )
    src = build_source(cfg, SourceContext(stores=stores, settings=None))
    events: list[Event] = []
    got = threading.Event()
    answer: dict[str, object] = {"value": "job-id"}

    def emit(event: Event):
        events.append(event)
        got.set()
        return answer["value"]

    src.start(emit)
    assert src.wait_ready(20)
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    ch = conn.channel()
    ch.confirm_delivery()

    def publish(body: bytes, **props) -> None:
        ch.basic_publish("", src.opts.queue, body, pika.BasicProperties(delivery_mode=2, **props))

    yield src, publish, events, got, stores, answer
    src.stop()
    conn.close()
    c = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    c.channel().queue_delete(src.opts.queue)
    c.channel().queue_delete(src.dead_letter_queue)
    c.channel().exchange_delete(src.opts.dead_letter_exchange)
    c.close()


def _wait_for(events: list, n: int, got: threading.Event, timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while len(events) < n and time.monotonic() < deadline:
        got.wait(0.1)
        got.clear()


@pytest.mark.rabbitmq
def test_source_emits_event_with_hints_and_acks(source_env, rabbit_url):
    src, publish, events, got, _, _ = source_env
    publish(
        msg(handler="anonymize", params={}, target="raw", target_prefix="done/"),
        correlation_id="corr-7",
        reply_to="my.replies",
    )
    _wait_for(events, 1, got)
    assert len(events) == 1
    ev = events[0]
    assert (ev.store, ev.key, ev.source) == ("docs", "a/b.jpg", "requests")
    assert ev.hints == {
        "handler": "anonymize",
        "params": {},
        "target": "raw",
        "target_prefix": "done/",
        "correlation_id": "corr-7",
        "reply_to": "my.replies",
    }
    src.stop()  # acked: nothing is redelivered to a fresh consumer
    assert get_raw(rabbit_url, src.opts.queue, timeout=0.5) is None


@pytest.mark.rabbitmq
def test_invalid_message_is_dead_lettered_with_reason_not_requeued(source_env, rabbit_url):
    src, publish, events, _got, _, _ = source_env
    publish(msg(input={"store": "docs", "key": "../secret.jpg"}), correlation_id="bad-1")
    dead = get_raw(rabbit_url, src.dead_letter_queue)
    assert dead is not None
    props, body = dead
    assert props.headers["x-facewarden-reason"] == "key.unsafe"
    assert props.headers["x-facewarden-reason-message"]
    assert props.correlation_id == "bad-1"
    assert json.loads(body)["input"]["key"] == "../secret.jpg"
    assert events == []
    src.stop()
    assert get_raw(rabbit_url, src.opts.queue, timeout=0.5) is None


@pytest.mark.rabbitmq
def test_inline_image_is_stored_then_emitted(source_env, face_photo):
    _src, publish, events, got, stores, _ = source_env
    data = face_photo.read_bytes()
    job_id = uuid.uuid4().hex
    publish(
        msg(
            input={
                "data": base64.b64encode(data).decode(),
                "filename": "portrait.jpg",
                "content_type": "image/jpeg",
            },
            job_id=job_id,
        )
    )
    _wait_for(events, 1, got)
    ev = events[0]
    assert ev.store == "raw" and ev.key == f"amqp-inline/{job_id}/portrait.jpg"
    assert ev.hints["job_id"] == job_id
    assert stores["raw"].get(ev.key) == data


@pytest.mark.rabbitmq
def test_unrouted_message_is_dead_lettered(source_env, rabbit_url):
    src, publish, _events, _got, _, answer = source_env
    answer["value"] = None  # the daemon's emit answers None when no route takes the event
    publish(msg())
    dead = get_raw(rabbit_url, src.dead_letter_queue)
    assert dead is not None and dead[0].headers["x-facewarden-reason"] == "route.none"


@pytest.mark.rabbitmq
def test_publish_result_to_results_exchange_and_reply_to(rabbit_cfg, rabbit_url):
    settings = Settings(queue=QueueConfig(backend="rabbitmq", rabbitmq=rabbit_cfg))
    reply_q = f"{rabbit_cfg.queue}.replies"
    watch_q = f"{rabbit_cfg.queue}.watch"
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    ch = conn.channel()
    ch.exchange_declare(rabbit_cfg.results_exchange, "topic", durable=True)
    ch.queue_declare(reply_q)
    ch.queue_declare(watch_q)
    ch.queue_bind(watch_q, rabbit_cfg.results_exchange, routing_key="anonymize")
    try:
        job = Job(
            handler="anonymize",
            params={},
            store="docs",
            key="a/b.jpg",
            target="out",
            hints={"correlation_id": "corr-9", "reply_to": reply_q},
        )
        assert wants_result(settings, job)
        assert not wants_result(
            settings, Job(handler="anonymize", params={}, store="d", key="k", target="o")
        )
        record = {
            "outcome": "ok",
            "seq": 3,
            "hash": "abc",
            "faces": 2,
            "outputs": [{"store": "out", "key": "a/b.jpg", "sha256": "f00"}],
        }
        assert publish_result(settings, job, record) is True
        for q in (reply_q, watch_q):
            got = get_raw(rabbit_url, q)
            assert got is not None
            props, body = got
            doc = json.loads(body)
            assert doc["schema"] == "facewarden.result/1"
            assert doc["job_id"] == job.id and doc["correlation_id"] == "corr-9"
            assert doc["outcome"] == "ok" and doc["outputs"][0]["key"] == "a/b.jpg"
            assert doc["audit"]["hash"] == "abc"
            assert props.correlation_id == "corr-9"
    finally:
        ch.queue_delete(reply_q)
        ch.queue_delete(watch_q)
        conn.close()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_job_message_to_result_through_the_daemon(
    rabbit_cfg, rabbit_url, tmp_path, face_photo, models_dir
):
    """A message asks for another target (route allows overrides) and sends the image
    inline; the daemon queues it on RabbitMQ and a worker process writes the result."""
    import time

    from facewarden.daemon.app import Daemon
    from facewarden.storage.audit import AuditLog

    tag = uuid.uuid4().hex[:8]
    requests_q = f"fwtest.{tag}.requests"
    settings = Settings.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "models_dir": str(models_dir),
            "stores": {
                "raw": {"type": "local", "root": str(tmp_path / "raw")},
                "out": {"type": "local", "root": str(tmp_path / "out")},
                "special": {"type": "local", "root": str(tmp_path / "special")},
            },
            "sources": [
                {
                    "type": "amqp-jobs",
                    "name": "requests",
                    "url": rabbit_url,
                    "queue": requests_q,
                    "dead_letter_exchange": f"fwtest.{tag}.rdlx",
                    "raw_store": "raw",
                }
            ],
            "routes": [
                {
                    "source": "requests",
                    "handler": "anonymize",
                    "target": "out",
                    "allow_overrides": True,
                }
            ],
            "queue": {"backend": "rabbitmq", "rabbitmq": rabbit_cfg.model_dump()},
            "workers": {"count": 1},
            "log": {"format": "json", "level": "warning"},
        }
    )
    daemon = Daemon(settings)
    daemon.start()
    job_id = uuid.uuid4().hex
    try:
        src = daemon.sources[0]
        assert src.wait_ready(20)
        conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
        ch = conn.channel()
        ch.confirm_delivery()
        body = msg(
            input={
                "data": base64.b64encode(face_photo.read_bytes()).decode(),
                "filename": "face.jpg",
            },
            target="special",
            target_prefix="done",
            job_id=job_id,
            correlation_id="c-1",
        )
        ch.basic_publish("", requests_q, body, pika.BasicProperties(delivery_mode=2))
        conn.close()
        audit = AuditLog(tmp_path / "state")
        deadline = time.monotonic() + 180
        while audit.find_job(job_id) is None:
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.3)
        record = audit.find_job(job_id)
        assert record["outcome"] == "ok"
        key = f"done/amqp-inline/{job_id}/face.jpg"
        assert [o["key"] for o in record["outputs"]] == [key]
        assert LocalStore("special", tmp_path / "special").stat(key) is not None
    finally:
        daemon.stop()
        c = pika.BlockingConnection(pika.URLParameters(rabbit_url))
        for q in (requests_q, f"{requests_q}.dead"):
            c.channel().queue_delete(q)
        c.channel().exchange_delete(f"fwtest.{tag}.rdlx")
        c.close()
