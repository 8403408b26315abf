"""End to end: a photo PUT into bucket ``raw-images`` comes out anonymized, with its audit
record beside it, in bucket ``anonymized-images`` — through each S3 delivery path.

One in-process Daemon (real worker process, real models, HTTP app on) serves all paths:
moto's ThreadedMotoServer over HTTP for S3 and SQS (moto itself sends the SQS
notifications), RabbitMQ on 127.0.0.1:5672 for the AMQP path. MinIO cannot run here: for
the AMQP, webhook and listen paths the test delivers the notification body MinIO
documents for the object it just PUT; the listen stream comes from a local HTTP server
speaking MinIO's documented format (see fixtures_s3.FakeListenServer).
"""
# ruff: noqa: F811  (pytest fixtures imported from fixture modules are re-bound as arguments)

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pika
import pytest
from fixtures_rabbit import rabbit_url  # noqa: F401
from fixtures_s3 import (  # noqa: F401
    REGION,
    FakeListenServer,
    minio_notification,
    moto_server,
    sample_photo,
    wire_bucket_to_sqs,
)

from facewarden.config import default_models_dir
from facewarden.config.schema import Settings
from facewarden.daemon.app import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

MODELS = default_models_dir()
RAW, OUT = "raw-images", "anonymized-images"
TOKEN = "e2e-token-0123456789abcdef"
PATHS = ("sqs", "amqp", "hook", "listen", "rec")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class World:
    def __init__(self, endpoint: str, daemon: Daemon, port: int, exchange: str,
                 listen: FakeListenServer, rabbit: str):
        self.endpoint, self.daemon, self.port = endpoint, daemon, port
        self.exchange, self.listen, self.rabbit = exchange, listen, rabbit
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)

    def put(self, key: str) -> tuple[bytes, str]:
        data = sample_photo(PATHS.index(key.split("/")[0]))  # fresh bytes per path
        self.s3.put_object(Bucket=RAW, Key=key, Body=data, ContentType="image/jpeg")
        return data, self.s3.head_object(Bucket=RAW, Key=key)["ETag"].strip('"')

    def wait_result(self, key: str, timeout: float = 120) -> tuple[bytes, dict[str, Any], dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = json.loads(self.s3.get_object(Bucket=OUT, Key=key + ".audit.json")
                                    ["Body"].read())
                obj = self.s3.get_object(Bucket=OUT, Key=key)
                return obj["Body"].read(), record, obj["Metadata"]
            except self.s3.exceptions.NoSuchKey:
                time.sleep(0.3)
        listing = [o["Key"] for o in self.s3.list_objects_v2(Bucket=OUT).get("Contents", [])]
        raise AssertionError(f"no result for {key} in {OUT} within {timeout}s; has {listing}")


@pytest.fixture(scope="module")
def world(moto_server: str, rabbit_url: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    exchange, amqp_queue = f"test.e2e-minio.{tag}", f"test.e2e-s3.{tag}"
    with pytest.MonkeyPatch.context() as mp:
        # the standard AWS credential chain (env); inherited by the spawned worker
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        s3 = boto3.client("s3", endpoint_url=moto_server, region_name=REGION)
        sqs = boto3.client("sqs", endpoint_url=moto_server, region_name=REGION)
        for b in (RAW, OUT):
            s3.create_bucket(Bucket=b)
        wiring = wire_bucket_to_sqs(s3, sqs, RAW, queue=f"e2e-{tag}")
        listen = FakeListenServer()
        port = _free_port()
        store = {"type": "s3", "endpoint_url": moto_server, "region": REGION,
                 "addressing_style": "path"}
        settings = Settings.model_validate({
            "state_dir": str(tmp_path_factory.mktemp("state")),
            "models_dir": str(MODELS),
            "workers": {"count": 1, "backoff_base": 0.2},
            "http": {"enabled": True, "bind": "127.0.0.1", "port": port},
            "log": {"format": "json"},
            "stores": {"raw": {**store, "bucket": RAW},
                       "anonymized": {**store, "bucket": OUT}},
            "sources": [
                {"type": "s3-sqs", "name": "sqs", "queue_url": wiring.queue_url,
                 "endpoint_url": moto_server, "region": REGION, "wait_time": 1,
                 "stores": ["raw"]},
                {"type": "s3-amqp", "name": "amqp", "url": rabbit_url, "exchange": exchange,
                 "queue": amqp_queue, "stores": ["raw"]},
                {"type": "s3-webhook", "name": "hook", "token": TOKEN, "stores": ["raw"]},
                {"type": "minio-listen", "name": "listen", "endpoint": listen.url,
                 "access_key": "minioadmin", "secret_key": "minioadmin", "stores": ["raw"]},
                {"type": "reconcile", "name": "rec", "store": "raw", "prefix": "rec/",
                 "interval": 1},
            ],
            # each path handles its own key prefix, so the SQS path (which sees every PUT)
            # does not also process the objects meant for the others
            "routes": [{"source": p, "match": f"{p}/*", "handler": "anonymize",
                        "target": "anonymized"} for p in PATHS],
        })
        daemon = Daemon(settings)
        daemon.start()
        try:
            yield World(moto_server, daemon, port, exchange, listen, rabbit_url)
        finally:
            daemon.stop()
            listen.close()
            conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
            ch = conn.channel()
            ch.queue_delete(amqp_queue)
            ch.exchange_delete(exchange)
            conn.close()


def check(world: World, key: str, data: bytes, source: str) -> None:
    out, record, meta = world.wait_result(key)
    assert record["outcome"] == "ok", record
    assert record["source"] == source
    assert record["input"]["store"] == "raw" and record["input"]["key"] == key
    assert record["input"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert [o["key"] for o in record["outputs"]] == [key]
    assert record["outputs"][0]["sha256"] == hashlib.sha256(out).hexdigest()
    assert out[:2] == b"\xff\xd8" and out != data  # a JPEG, and not the original
    assert record.get("faces", record.get("facts", {}).get("faces", 1))
    assert meta["facewarden-input-sha256"] == record["input"]["sha256"]


def test_sqs_path(world: World) -> None:
    key = "sqs/team photo +1/été.jpg"
    data, _ = world.put(key)
    check(world, key, data, "sqs")


def test_amqp_path(world: World) -> None:
    key = "amqp/a+b c.jpg"
    data, etag = world.put(key)
    conn = pika.BlockingConnection(pika.URLParameters(world.rabbit))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(world.exchange, "", json.dumps(minio_notification(RAW, key, etag, len(data))),
                     pika.BasicProperties(content_type="application/json", delivery_mode=2))
    conn.close()
    check(world, key, data, "amqp")


def test_webhook_path(world: World) -> None:
    key = "hook/写真 1.jpg"
    data, etag = world.put(key)
    url = f"http://127.0.0.1:{world.port}/webhooks/s3/hook"
    body = minio_notification(RAW, key, etag, len(data))
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    check(world, key, data, "hook")


def test_listen_path(world: World) -> None:
    key = "listen/x y.jpg"
    data, etag = world.put(key)
    world.listen.feed.put({"Records": minio_notification(RAW, key, etag, len(data))["Records"]})
    check(world, key, data, "listen")


def test_reconcile_path(world: World) -> None:
    """No notification at all (as if it was lost while the daemon was down)."""
    key = "rec/lost while down.jpg"
    data, _ = world.put(key)
    check(world, key, data, "rec")


def test_audit_verify_checks_the_copies_in_s3_or_fails_naming_the_store(world: World) -> None:
    """Issue 9: `audit verify --state DIR` said OK with "0 copies checked" when results
    lived in S3. With the stores from the config it reads the copies in the bucket;
    without them it fails and names the store it could not reach."""
    from click.testing import CliRunner

    from facewarden.cli import cli
    from facewarden.cli.audit import CopyReader
    from facewarden.storage.audit import AuditLog
    from facewarden.storage.stores import open_stores

    key = "sqs/verify me.jpg"
    data, _ = world.put(key)
    check(world, key, data, "sqs")
    settings = world.daemon.settings
    log = AuditLog(settings.state_dir, create=False)
    reader = CopyReader(open_stores(settings.all_stores()))
    report = log.verify(reader.read)
    assert report.ok and report.copies_checked >= 1 and not reader.unreachable, report.problems

    world.s3.put_object(Bucket=OUT, Key=key + ".audit.json", Body=b'{"hash": "forged"}')
    assert any("differs from the log" in p for p in log.verify(CopyReader(open_stores(settings.all_stores()))
                                                              .read).problems)

    blind = CliRunner().invoke(cli, ["audit", "verify", "--state", str(settings.state_dir)])
    assert blind.exit_code == 1 and "'anonymized'" in blind.output and "could not be read" in blind.output
