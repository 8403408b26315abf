"""Real-HTTP S3/SQS for tests: moto's ThreadedMotoServer on 127.0.0.1 (one per session).

Import the fixtures you need into a test module:
``from fixtures_s3 import moto_server, s3_env, s3_client, sqs_client  # noqa: F401``
(pytest puts tests/ on sys.path in its default "prepend" import mode).
Each test starts from an empty moto (``s3_env`` resets its state) so tests can reuse
bucket names such as ``raw-images``.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import boto3
import pytest

from facewarden.config.schema import S3StoreConfig
from facewarden.daemon.jobs import Event
from facewarden.storage.s3 import S3Store

EVENTS_DIR = Path(__file__).resolve().parent / "data" / "s3_events"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REGION = "us-east-1"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))


def sample_photo(n: int = 0) -> bytes:
    """The n-th real photo (with faces) from ../shared/data/faces-pascal. Different
    tests that expect fresh processing need different bytes: the pipeline treats the
    same bytes + handler + params as a duplicate of the earlier result."""
    photos = sorted((SHARED_DATA / "faces-pascal").glob("*.jpg"))
    if len(photos) <= n:
        raise RuntimeError(f"fewer than {n + 1} photos under {SHARED_DATA / 'faces-pascal'}")
    return photos[n].read_bytes()


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


def minio_notification(bucket: str, key: str, etag: str, size: int,
                       event: str = "s3:ObjectCreated:Put") -> dict[str, Any]:
    """The body MinIO's AMQP and webhook targets send (and one record of its listen
    stream), per MinIO's documentation: wrapper + Records, key URL-encoded (QueryEscape)."""
    return {
        "EventName": event,
        "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
            "eventTime": "2026-11-21T05:00:00.000Z", "eventName": event,
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"principalId": "minioadmin", "region": "",
                                  "sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": "1798E6F0E1A3A4F1"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                   "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                              "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": quote_plus(key), "size": size, "eTag": etag,
                              "contentType": "image/jpeg", "sequencer": "1798E6F0E2B9C7D2"}},
            "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"},
        }],
    }


class Collector:
    """An ``emit`` for tests: records events, can be told to fail, and can be waited on."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail_next = 0
        self._cond = threading.Condition()

    def __call__(self, ev: Event) -> str:
        with self._cond:
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("queue unavailable (test)")
            self.events.append(ev)
            self._cond.notify_all()
            return "job"

    def wait(self, n: int, timeout: float = 15.0) -> list[Event]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.events) >= n, timeout=timeout):
                raise AssertionError(f"expected {n} events within {timeout}s, got {self.events}")
            return list(self.events)


class FakeListenServer:
    """Stands in for MinIO's ListenBucketNotification endpoint (no MinIO binary here):
    a chunked HTTP/1.1 stream of newline-delimited JSON records with blank keep-alive
    lines, as documented. ``feed`` takes records; "CLOSE" ends the current stream."""

    def __init__(self) -> None:
        self.feed: queue.Queue[Any] = queue.Queue()
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                outer.requests.append({"path": url.path, "query": parse_qs(url.query),
                                       "auth": self.headers.get("Authorization", "")})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while not outer.closing:
                        try:
                            item = outer.feed.get(timeout=0.2)
                        except queue.Empty:
                            item = None
                        if item == "CLOSE":
                            break
                        line = (json.dumps(item) if item is not None else " ") + "\n"
                        data = line.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass

        self.closing = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        self.httpd.shutdown()
        self.httpd.server_close()
