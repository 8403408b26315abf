"""Every S3 delivery path, from a PUT into bucket ``raw-images`` to the emitted Event.

Real services: moto's ThreadedMotoServer over HTTP for S3 and SQS (moto wires bucket
notifications to SQS itself), RabbitMQ on 127.0.0.1:5672. What cannot run here is MinIO
itself: for the AMQP and webhook paths the test PUTs the object into moto's S3 and then
delivers the notification body MinIO documents for that object (``minio_notification``);
for the listen API a small local HTTP server streams MinIO's documented format
(newline-delimited JSON records with blank keep-alive lines) to the real ``minio`` client.
"""
# ruff: noqa: F811  (pytest fixtures imported from fixture modules are re-bound as arguments)

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from fixtures_rabbit import private_node, rabbit_url  # noqa: F401
from fixtures_s3 import (  # noqa: F401
    Collector,
    FakeListenServer,
    make_store,
    minio_notification,
    moto_server,
    s3_client,
    s3_env,
    sample_photo,
    sqs_client,
    wire_bucket_to_sqs,
)
from starlette.applications import Starlette
from starlette.testclient import TestClient

from facewarden.daemon.jobs import Event
from facewarden.daemon.sources import SourceContext, build_source
from facewarden.errors import ConfigError
from facewarden.storage.audit import AuditLog

BUCKET = "raw-images"
KEY = "uploads/team photo +1/写真.jpg"
TOKEN = "s3cr3t-token-for-tests-0123456789"


@pytest.fixture
def raw(s3_env: str, s3_client: Any) -> Any:
    s3_client.create_bucket(Bucket=BUCKET)
    return make_store(s3_env, "raw", BUCKET)


def put_photo(s3_client: Any, key: str = KEY) -> str:
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=sample_photo())
    return s3_client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')


def source(ctx_stores: dict[str, Any], services: dict[str, Any] | None = None, **cfg: Any) -> Any:
    ctx = SourceContext(stores=ctx_stores, settings=None, services=services or {})
    return build_source(dict(**cfg), ctx)


def expect(ev: Event, src: str, etag: str, key: str = KEY) -> None:
    assert (ev.store, ev.key, ev.source, ev.version) == ("raw", key, src, etag)


# -- SQS ---------------------------------------------------------------------------------
def test_sqs_put_and_multipart_upload(raw: Any, s3_env: str, s3_client: Any,
                                      sqs_client: Any) -> None:
    wiring = wire_bucket_to_sqs(s3_client, sqs_client, BUCKET)  # sends an s3:TestEvent first
    src = source({"raw": raw}, type="s3-sqs", name="sqs", queue_url=wiring.queue_url,
                 endpoint_url=s3_env, region="us-east-1", wait_time=1, stores=["raw"])
    got = Collector()
    src.start(got)
    try:
        etag = put_photo(s3_client)
        expect(got.wait(1)[0], "sqs", etag)
        # a multipart upload notifies Put and CompleteMultipartUpload: one event
        up = s3_client.create_multipart_upload(Bucket=BUCKET, Key="big one.jpg")
        part = s3_client.upload_part(Bucket=BUCKET, Key="big one.jpg", UploadId=up["UploadId"],
                                     PartNumber=1, Body=b"y" * (5 * 1024 * 1024))
        s3_client.complete_multipart_upload(
            Bucket=BUCKET, Key="big one.jpg", UploadId=up["UploadId"],
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
        s3_client.delete_object(Bucket=BUCKET, Key=KEY)  # removal: no event
        events = got.wait(2)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # give a duplicate the chance to show up
            attrs = sqs_client.get_queue_attributes(
                QueueUrl=wiring.queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                                           "ApproximateNumberOfMessagesNotVisible"])
            if all(v == "0" for v in attrs["Attributes"].values()):
                break
            time.sleep(0.2)
        assert src.ready()
    finally:
        src.stop()
    assert [e.key for e in got.events] == [KEY, "big one.jpg"]
    assert events[1].version.endswith("-1")  # multipart ETag
    # every message, test event and removal included, was deleted
    assert all(v == "0" for v in attrs["Attributes"].values())


def test_sqs_message_is_kept_until_emit_succeeds(raw: Any, s3_env: str, s3_client: Any,
                                                 sqs_client: Any) -> None:
    wiring = wire_bucket_to_sqs(s3_client, sqs_client, BUCKET)
    src = source({"raw": raw}, type="s3-sqs", name="sqs", queue_url=wiring.queue_url,
                 endpoint_url=s3_env, region="us-east-1", wait_time=1, visibility_timeout=1,
                 stores=["raw"])
    got = Collector()
    got.fail_next = 1  # the queue refuses the first attempt
    src.start(got)
    try:
        etag = put_photo(s3_client)
        [ev] = got.wait(1, timeout=20)  # redelivered by SQS after the visibility timeout
    finally:
        src.stop()
    expect(ev, "sqs", etag)
    assert got.fail_next == 0


# -- AMQP (MinIO's AMQP target) ----------------------------------------------------------------
@pytest.fixture
def amqp_names(rabbit_url: str) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = (f"test.minio-events.{tag}", f"test.s3-events.{tag}")
    yield names
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    ch = conn.channel()
    ch.queue_delete(names[1])
    ch.exchange_delete(names[0])
    conn.close()


def publish(url: str, exchange: str, body: dict[str, Any] | bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    ch.basic_publish(exchange=exchange, routing_key="", body=data,
                     properties=pika.BasicProperties(content_type="application/json",
                                                     delivery_mode=2))
    conn.close()


def queue_depth(url: str, name: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        q = conn.channel().queue_declare(name, passive=True)
        return q.method.message_count
    finally:
        conn.close()


@pytest.mark.rabbitmq
def test_amqp_put_event_and_failed_emit_is_requeued(raw: Any, s3_client: Any, rabbit_url: str,
                                                    amqp_names: tuple[str, str]) -> None:
    exchange, qname = amqp_names
    src = source({"raw": raw}, type="s3-amqp", name="amqp", url=rabbit_url, exchange=exchange,
                 queue=qname, stores=["raw"], retry_delay=0.1)
    got = Collector()
    got.fail_next = 1
    src.start(got)
    try:
        deadline = time.monotonic() + 15
        while not src.ready():
            assert time.monotonic() < deadline, "AMQP source did not connect"
            time.sleep(0.05)
        etag = put_photo(s3_client)
        size = s3_client.head_object(Bucket=BUCKET, Key=KEY)["ContentLength"]
        publish(rabbit_url, exchange, b"{not json")  # acked and dropped, never requeued
        publish(rabbit_url, exchange, minio_notification(BUCKET, KEY, etag, size))
        publish(rabbit_url, exchange, minio_notification(BUCKET, "gone.jpg", "x",
                                                         0, "s3:ObjectRemoved:Delete"))
        [ev] = got.wait(1)
        expect(ev, "amqp", etag)
        assert ev.hints["size"] == size
        deadline = time.monotonic() + 10
        while queue_depth(rabbit_url, qname) != 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        src.stop()
    assert len(got.events) == 1
    assert not src.ready()


@pytest.mark.rabbitmq
def test_amqp_events_wait_in_our_queue_while_we_are_down(raw: Any, s3_client: Any,
                                                        rabbit_url: str,
                                                        amqp_names: tuple[str, str]) -> None:
    exchange, qname = amqp_names
    cfg = {"type": "s3-amqp", "name": "amqp", "url": rabbit_url, "exchange": exchange,
           "queue": qname, "stores": ["raw"]}
    first = source({"raw": raw}, **cfg)
    first.start(Collector())
    deadline = time.monotonic() + 15
    while not first.ready():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.stop()  # the queue is declared and bound; the daemon goes down
    etag = put_photo(s3_client)
    publish(rabbit_url, exchange, minio_notification(BUCKET, KEY, etag, 1))
    second, got = source({"raw": raw}, **cfg), Collector()
    second.start(got)
    try:
        expect(got.wait(1)[0], "amqp", etag)
    finally:
        second.stop()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_amqp_source_reconnects_after_broker_restart(raw: Any, s3_client: Any,
                                                     private_node: Any) -> None:
    """On a private node (stopping the shared broker would hurt other tests)."""
    url = private_node.url
    src = source({"raw": raw}, type="s3-amqp", name="amqp", url=url, exchange="minio-events",
                 queue="s3-events", stores=["raw"], reconnect_max_delay=0.5)
    got = Collector()
    src.start(got)
    try:
        deadline = time.monotonic() + 15
        while not src.ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        etag = put_photo(s3_client)
        publish(url, "minio-events", minio_notification(BUCKET, KEY, etag, 1))
        got.wait(1)
        private_node.ctl("stop_app")
        deadline = time.monotonic() + 15
        while src.ready():
            assert time.monotonic() < deadline, "source did not notice the broker going away"
            time.sleep(0.05)
        private_node.ctl("start_app")
        publish(url, "minio-events", minio_notification(BUCKET, "after restart.jpg", "e2", 1))
        assert got.wait(2, timeout=30)[1].key == "after restart.jpg"
        assert src.ready()
    finally:
        src.stop()


# -- webhook (MinIO's webhook target) ----------------------------------------------------------
@pytest.fixture
def webhook(raw: Any) -> Iterator[tuple[Any, TestClient, Collector]]:
    src = source({"raw": raw}, type="s3-webhook", name="hook", token=TOKEN, stores=["raw"],
                 max_body_bytes=4096)
    got = Collector()
    src.start(got)
    with TestClient(Starlette(routes=src.routes())) as client:
        yield src, client, got
    src.stop()


def test_webhook_put_event(webhook: Any, s3_client: Any) -> None:
    _src, client, got = webhook
    etag = put_photo(s3_client)
    body = minio_notification(BUCKET, KEY, etag, 10)
    r = client.post("/webhooks/s3/hook", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    [ev] = got.events
    expect(ev, "hook", etag)
    # MinIO retries: the same notification again is answered but not emitted twice
    r = client.post("/webhooks/s3/hook", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and len(got.events) == 1


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-wrong-token-xx", f"Basic {TOKEN}",
                                    f"Bearer {TOKEN}x", "Bearer "])
def test_webhook_rejects_bad_tokens(webhook: Any, header: str | None) -> None:
    _src, client, got = webhook
    headers = {"Authorization": header} if header is not None else {}
    r = client.post("/webhooks/s3/hook", json=minio_notification(BUCKET, KEY, "e", 1),
                    headers=headers)
    assert r.status_code == 401 and got.events == []
    assert r.headers["www-authenticate"] == "Bearer"


def test_webhook_size_json_and_queue_errors(webhook: Any) -> None:
    _src, client, got = webhook
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = json.dumps({"Records": [], "pad": "x" * 5000}).encode()
    assert client.post("/webhooks/s3/hook", content=big, headers=auth).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(10):
            yield b" " * 1000

    assert client.post("/webhooks/s3/hook", content=chunks(), headers=auth).status_code == 413
    assert client.post("/webhooks/s3/hook", content=b"{nope", headers=auth).status_code == 400
    assert client.post("/webhooks/s3/hook", content=b"[1]", headers=auth).status_code == 400
    # unsafe key: logged and dropped, 200 so that MinIO does not retry it forever
    r = client.post("/webhooks/s3/hook", headers=auth,
                    json=minio_notification(BUCKET, "../../etc/passwd", "e", 1))
    assert r.status_code == 200 and r.json()["accepted"] == 0
    got.fail_next = 1
    r = client.post("/webhooks/s3/hook", headers=auth,
                    json=minio_notification(BUCKET, "a.jpg", "e", 1))
    assert r.status_code == 503  # MinIO keeps the event and retries
    r = client.post("/webhooks/s3/hook", headers=auth,
                    json=minio_notification(BUCKET, "a.jpg", "e", 1))
    assert r.status_code == 200 and [e.key for e in got.events] == ["a.jpg"]


def test_webhook_config_errors(raw: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\[hook\]"):
        source({"raw": raw}, type="s3-webhook", name="hook", stores=["raw"])
    with pytest.raises(ConfigError, match=r"sources\[hook\]\.token"):
        source({"raw": raw}, type="s3-webhook", name="hook", token="short", stores=["raw"])
    with pytest.raises(ConfigError, match=r"sources\[hook\]\.stores"):
        source({"raw": raw}, type="s3-webhook", name="hook", token=TOKEN, stores=["nope"])
    (tmp_path / "tok").write_text(TOKEN + "\n")
    src = source({"raw": raw}, type="s3-webhook", name="hook", token_file=str(tmp_path / "tok"),
                 stores=["raw"], path="/minio")
    assert [r.path for r in src.routes()] == ["/minio"]


# -- MinIO listen API ---------------------------------------------------------------------------
def test_minio_listen_stream(raw: Any, s3_client: Any) -> None:
    server = FakeListenServer()
    src = source({"raw": raw}, type="minio-listen", name="listen", endpoint=server.url,
                 access_key="minioadmin", secret_key="minioadmin", stores=["raw"])
    got = Collector()
    src.start(got)
    try:
        etag = put_photo(s3_client)
        note = minio_notification(BUCKET, KEY, etag, 10)
        server.feed.put({"Records": note["Records"]})
        expect(got.wait(1)[0], "listen", etag)
        assert src.ready()
        # the stream ends (MinIO restarts): the client reopens it and events keep coming
        server.feed.put("CLOSE")
        other = minio_notification(BUCKET, "second.jpg", "e2", 5)
        server.feed.put({"Records": other["Records"]})
        assert got.wait(2)[1].key == "second.jpg"
    finally:
        t = time.monotonic()
        src.stop()
        stopped_in = time.monotonic() - t
        server.close()
    req = server.requests[0]
    assert req["path"] == f"/{BUCKET}"
    assert req["query"]["events"] == ["s3:ObjectCreated:*"]
    assert req["auth"].startswith("AWS4-HMAC-SHA256 Credential=minioadmin/")
    assert len(server.requests) >= 2
    assert stopped_in < 10  # stop() must not hang on an open stream (bounded by join timeout)
    assert not src.ready()


# -- reconciliation ---------------------------------------------------------------------------
def test_reconcile_emits_objects_without_audit_record(raw: Any, s3_client: Any,
                                                      tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    done_etag = put_photo(s3_client, "done.jpg")
    audit.append({"job_id": "j1", "outcome": "ok",
                  "input": {"store": "raw", "key": "done.jpg", "version": done_etag}})
    new_etag = put_photo(s3_client, KEY)
    s3_client.put_object(Bucket=BUCKET, Key="out/x.audit.json", Body=b"{}")
    s3_client.put_object(Bucket=BUCKET, Key="quarantine/bad.jpg", Body=b"x")
    src = source({"raw": raw}, {"audit": audit}, type="reconcile", name="rec", store="raw",
                 interval=3600)
    got = Collector()
    src.start(got)
    try:
        assert src.wait_passes(1, timeout=15)
        [ev] = got.events
        expect(ev, "rec", new_etag)
        assert ev.hints["reconcile"] is True
        assert src.ready()
        # done.jpg replaced with new content: a new ETag has no record yet
        s3_client.put_object(Bucket=BUCKET, Key="done.jpg", Body=b"new content")
        assert src.run_once(got) == {"listed": 4, "emitted": 2}
        assert [e.key for e in got.events[1:]] == ["done.jpg", KEY]
    finally:
        src.stop()
    audit.close()


def test_reconcile_config_errors(raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"sources\[rec\]\.store"):
        source({"raw": raw}, {"audit": object()}, type="reconcile", name="rec", store="nope")
    with pytest.raises(ConfigError, match="audit"):
        source({"raw": raw}, {}, type="reconcile", name="rec", store="raw")
    with pytest.raises(ConfigError, match=r"sources\[rec\]\.interval"):
        source({"raw": raw}, {}, type="reconcile", name="rec", store="raw", interval=0)


# -- documented config ----------------------------------------------------------------------
def test_documented_config_builds_every_source(tmp_path: Path) -> None:
    """docs/config-s3.toml is valid: settings load and every S3 source type builds."""
    from facewarden.config.load import load_settings
    from facewarden.storage.stores import open_stores

    doc = Path(__file__).resolve().parents[1] / "docs" / "config-s3.toml"
    creds = tmp_path / "credentials"  # what systemd's LoadCredential= provides
    creds.mkdir()
    (creds / "facewarden_minio-webhook-token").write_text("a-token-of-32-characters-exactly\n")
    settings = load_settings(doc, environ={"CREDENTIALS_DIRECTORY": str(creds)},
                             overrides={"state_dir": str(tmp_path)})
    stores = open_stores(settings.all_stores())
    ctx = SourceContext(stores=stores, settings=settings, services={"audit": AuditLog(tmp_path)})
    built = {build_source(cfg, ctx).name for cfg in settings.sources}
    assert built == {"s3-sqs", "s3-amqp", "s3-webhook", "minio-listen", "reconcile-raw"}
