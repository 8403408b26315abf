"""Event-to-result latency for an S3 PUT delivered through the AMQP notification path.

S3 is moto's ThreadedMotoServer over real HTTP; RabbitMQ is the broker on 127.0.0.1:5672.
MinIO cannot run here, so after each PUT this script publishes the notification body MinIO's
AMQP target documents for that object (as MinIO would) to the exchange the daemon's
`s3-amqp` source consumes. Latency = from the start of the PUT to the moment the audit record
exists beside the result in the target bucket (polled with HEAD every 5 ms). The daemon runs
in-process with one local worker process, on the embedded queue or on RabbitMQ (--queue).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pika
from moto.server import ThreadedMotoServer
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from fixtures_s3 import minio_notification  # noqa: E402

from facewarden.config import default_models_dir  # noqa: E402
from facewarden.config.schema import Settings  # noqa: E402
from facewarden.daemon.app import Daemon  # noqa: E402

RAW, OUT, REGION = "raw-images", "anonymized-images", "us-east-1"
PHOTOS = sorted((REPO.parent / "shared" / "data" / "faces-pascal").glob("*.jpg"))


def photo(i: int) -> bytes:
    buf = io.BytesIO()
    Image.open(PHOTOS[i % len(PHOTOS)]).save(buf, "JPEG", quality=92, comment=f"bench {i}".encode())
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20, help="objects PUT one at a time (default 20)")
    ap.add_argument("--queue", choices=["sqlite", "rabbitmq"], default="sqlite")
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = ap.parse_args()
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}.items():
        os.environ.setdefault(k, v)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    for b in (RAW, OUT):
        s3.create_bucket(Bucket=b)
    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"bench.minio.{tag}", f"bench.s3.{tag}"
    store = {"type": "s3", "endpoint_url": endpoint, "region": REGION, "addressing_style": "path"}
    settings = Settings.model_validate({
        "state_dir": tempfile.mkdtemp(prefix="fw-bench-s3-"),
        "models_dir": str(default_models_dir()),
        "workers": {"count": 1},
        "log": {"format": "json", "level": "warning"},
        "queue": {"backend": args.queue, "rabbitmq": {"url": args.amqp_url, "queue": f"bench.jobs.{tag}"}},
        "stores": {"raw": {**store, "bucket": RAW}, "anonymized": {**store, "bucket": OUT}},
        "sources": [{"type": "s3-amqp", "name": "amqp", "url": args.amqp_url, "exchange": exchange,
                     "queue": queue, "stores": ["raw"]}],
        "routes": [{"source": "amqp", "handler": "anonymize", "target": "anonymized"}],
    })
    daemon = Daemon(settings)
    daemon.start()
    conn = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    ch = conn.channel()
    ch.confirm_delivery()
    lat = []
    try:
        for i in range(args.n + 1):  # the first one warms the worker up and is not counted
            key, data = f"bench/{i:03d}.jpg", photo(i)
            t0 = time.perf_counter()
            s3.put_object(Bucket=RAW, Key=key, Body=data, ContentType="image/jpeg")
            etag = s3.head_object(Bucket=RAW, Key=key)["ETag"].strip('"')
            ch.basic_publish(exchange, "", json.dumps(minio_notification(RAW, key, etag, len(data))),
                             pika.BasicProperties(content_type="application/json", delivery_mode=2))
            deadline = t0 + 300
            while True:
                try:
                    s3.head_object(Bucket=OUT, Key=key + ".audit.json")
                    break
                except s3.exceptions.ClientError:
                    if time.perf_counter() > deadline:
                        raise TimeoutError(key) from None
                    time.sleep(0.005)
            if i:
                lat.append(time.perf_counter() - t0)
            time.sleep(0.3)
    finally:
        conn.close()
        daemon.stop()
        server.stop()
        c = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
        c.channel().queue_delete(queue)
        c.channel().exchange_delete(exchange)
        if args.queue == "rabbitmq":
            c.channel().queue_delete(f"bench.jobs.{tag}")
        c.close()
    ms = np.array(lat) * 1000
    print(f"S3 PUT -> AMQP notification -> result + audit record in {OUT} ({args.queue} job queue, 1 worker, "
          f"{len(lat)} PASCAL photos ~500x375)")
    print(f"p50 {np.percentile(ms, 50):.0f} ms   p95 {np.percentile(ms, 95):.0f} ms   max {ms.max():.0f} ms")


if __name__ == "__main__":
    main()
