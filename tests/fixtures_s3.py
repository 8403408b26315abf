"""Real-HTTP S3/SQS for tests: moto's ThreadedMotoServer on 127.0.0.1 (one per session).

Import the fixtures you need into a test module:
``from fixtures_s3 import moto_server, s3_env, s3_client, sqs_client  # noqa: F401``
(pytest puts tests/ on sys.path in its default "prepend" import mode).
Each test starts from an empty moto (``s3_env`` resets its state) so tests can reuse
bucket names such as ``raw-images``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from facewarden.config.schema import S3StoreConfig
from facewarden.storage.s3 import S3Store

EVENTS_DIR = Path(__file__).resolve().parent / "data" / "s3_events"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REGION = "us-east-1"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))


def sample_photo() -> bytes:
    """A real JPEG from ../shared/data (any one; the S3 tests only move bytes)."""
    for p in sorted(SHARED_DATA.rglob("*.jpg")):
        if p.stat().st_size < 2_000_000:
            return p.read_bytes()
    raise RuntimeError(f"no JPEG under {SHARED_DATA}")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials through the standard AWS chain (environment), and an empty moto."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    req = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    return moto_server


@pytest.fixture
def s3_client(s3_env: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_env, region_name=REGION)


@pytest.fixture
def sqs_client(s3_env: str) -> Any:
    return boto3.client("sqs", endpoint_url=s3_env, region_name=REGION)


def make_store(endpoint: str, name: str, bucket: str, prefix: str = "", **kw: Any) -> S3Store:
    cfg = S3StoreConfig(type="s3", bucket=bucket, prefix=prefix, endpoint_url=endpoint,
                        region=REGION, addressing_style="path", **kw)
    return S3Store(name, cfg)


@dataclass
class SqsWiring:
    queue_url: str
    queue_arn: str


def wire_bucket_to_sqs(s3: Any, sqs: Any, bucket: str, queue: str = "s3-events") -> SqsWiring:
    """Bucket notifications -> SQS queue, as an operator would set them up on AWS."""
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    arn = attrs["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return SqsWiring(url, arn)


# -- RabbitMQ (used only when tests/fixtures_rabbit.py offers nothing better) -------------
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """RabbitMQ on 127.0.0.1:5672, started (``rabbitmq-server -detached``) when it is down.

    Fails, never skips: tests marked ``rabbitmq`` must run in CI.
    """
    if not _port_open("127.0.0.1", 5672):
        subprocess.run(["rabbitmq-server", "-detached"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not _port_open("127.0.0.1", 5672):
            if time.monotonic() > deadline:
                pytest.fail("RabbitMQ did not come up on 127.0.0.1:5672")
            time.sleep(0.5)
        time.sleep(2)  # the port opens slightly before the broker accepts logins
    return RABBIT_URL
