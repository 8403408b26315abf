"""DMS webhook over real HTTP (uvicorn on a loopback port, httpx) with real local stores.

The job-status service and the emit callback are stand-ins here (the daemon provides the
real ones); the end-to-end path through the daemon and RabbitMQ is in test_worker_rabbitmq.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from facewarden.daemon.http import build_app, serve_in_thread
from facewarden.daemon.jobs import Event
from facewarden.daemon.sources import SourceContext, build_source
from facewarden.daemon.sources.dms_webhook import sign
from facewarden.errors import ConfigError
from facewarden.storage.local import LocalStore

SECRET = b"0123456789abcdef0123456789abcdef"


class FakeJobs:
    """Stand-in for the daemon's job-status service (queue + audit index)."""

    def __init__(self) -> None:
        self.known: dict[str, dict] = {}

    def status(self, job_id: str) -> dict | None:
        return self.known.get(job_id)


@pytest.fixture
def env(tmp_path: Path, face_photo: Path):
    stores = {
        "raw": LocalStore("raw", tmp_path / "raw"),
        "docs": LocalStore("docs", tmp_path / "docs"),
    }
    stores["docs"].put("2024/in.jpg", face_photo.read_bytes(), content_type="image/jpeg")
    events: list[Event] = []
    jobs = FakeJobs()
    cfg = dict(
        type="dms-webhook",
        name="dms",
        secret=SECRET.decode(),
        store="docs",
        raw_store="raw",
        max_body_bytes=2_000_000,
    )
    source = build_source(cfg, SourceContext(stores=stores, settings=None, services={"jobs": jobs}))

    def emit(event: Event) -> str:
        events.append(event)
        return event.hints["job_id"]

    source.start(emit)
    # As the daemon wires it: GET /jobs/{id} is the daemon's, and accepts the DMS secret.
    app = build_app(sources=[source], services={"jobs": jobs}, job_secrets=[SECRET])
    handle = serve_in_thread(app, "127.0.0.1", 0)
    with httpx.Client(base_url=handle.url, timeout=30) as client:
        yield client, events, jobs, stores, face_photo
    handle.stop()


def headers(body: bytes, *, ts: int | None = None, secret: bytes = SECRET, **extra: str) -> dict:
    stamp = str(int(time.time()) if ts is None else ts)
    return {
        "X-Facewarden-Timestamp": stamp,
        "X-Facewarden-Signature": sign(secret, stamp, body),
        **extra,
    }


def post_json(client: httpx.Client, doc: dict, **kw) -> tuple:
    body = json.dumps(doc).encode()
    h = headers(body, **kw)
    h["Content-Type"] = "application/json"
    return client.post("/webhooks/dms", content=body, headers=h), body, h


def test_signed_json_request_is_queued_and_status_is_reported(env):
    client, events, jobs, _, _ = env
    resp, _, _ = post_json(client, {"key": "2024/in.jpg", "correlation_id": "doc-42"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert resp.json()["status_url"] == f"/jobs/{job_id}"
    assert len(events) == 1
    ev = events[0]
    assert (ev.store, ev.key, ev.source) == ("docs", "2024/in.jpg", "dms")
    assert ev.hints == {"job_id": job_id, "correlation_id": "doc-42"}

    path = f"/jobs/{job_id}"
    ts = str(int(time.time()))
    get_h = {
        "X-Facewarden-Timestamp": ts,
        "X-Facewarden-Signature": sign(SECRET, ts, f"GET {path}".encode()),
    }
    assert client.get(path, headers=get_h).status_code == 404  # not known yet
    jobs.known[job_id] = {
        "id": job_id,
        "state": "done",
        "outcome": "ok",
        "outputs": [{"store": "out", "key": "2024/in.jpg", "sha256": "ab"}],
    }
    got = client.get(path, headers=get_h)
    assert got.status_code == 200 and got.json()["outputs"][0]["key"] == "2024/in.jpg"
    # A signature for one job does not open another.
    other = f"/jobs/{uuid.uuid4().hex}"
    assert client.get(other, headers=get_h).status_code == 401
    assert client.get(path).status_code == 401


@pytest.mark.parametrize("mutate", ["missing", "wrong_secret", "tampered", "stale", "garbage"])
def test_bad_or_missing_signature_is_401_and_nothing_queued(env, mutate):
    client, events, _, _, _ = env
    body = json.dumps({"key": "2024/in.jpg"}).encode()
    h = headers(body)
    if mutate == "missing":
        h = {}
    elif mutate == "wrong_secret":
        h = headers(body, secret=b"another-secret-another-secret!!")
    elif mutate == "tampered":
        body = json.dumps({"key": "2024/other.jpg"}).encode()
    elif mutate == "stale":
        h = headers(body, ts=int(time.time()) - 301)
    elif mutate == "garbage":
        h["X-Facewarden-Signature"] = "sha256=" + "0" * 64
    h["Content-Type"] = "application/json"
    resp = client.post("/webhooks/dms", content=body, headers=h)
    assert resp.status_code == 401
    assert events == []


def test_replayed_request_is_rejected(env):
    client, events, _, _, _ = env
    resp, body, h = post_json(client, {"key": "2024/in.jpg"})
    assert resp.status_code == 202
    again = client.post("/webhooks/dms", content=body, headers=h)
    assert again.status_code == 409
    assert again.json()["error"] == "auth.replayed"
    assert len(events) == 1


def test_oversized_body_is_413(env):
    client, events, _, _, _ = env
    body = b"{" + b" " * 2_100_000 + b"}"
    h = headers(body)
    h["Content-Type"] = "application/json"
    assert client.post("/webhooks/dms", content=body, headers=h).status_code == 413

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(30):
            yield b" " * 100_000

    h2 = {k: v for k, v in h.items()}
    assert client.post("/webhooks/dms", content=chunks(), headers=h2).status_code == 413
    assert events == []


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b.jpg", "/abs.jpg", "a\\..\\b.jpg"])
def test_key_escaping_the_store_is_400(env, key):
    client, events, _, _, _ = env
    resp, _, _ = post_json(client, {"key": key})
    assert resp.status_code == 400
    assert resp.json()["error"] == "key.unsafe"
    assert events == []


def test_other_client_errors(env):
    client, events, _, _, _ = env
    assert post_json(client, {"key": "nope.jpg"})[0].status_code == 404
    assert (
        post_json(client, {"key": "2024/in.jpg", "store": "raw-but-not-allowed"})[0].status_code
        == 400
    )
    assert post_json(client, {"key": "2024/in.jpg", "handler": "x"})[0].status_code == 400
    body = b"key=2024/in.jpg"
    h = headers(body, **{"Content-Type": "application/x-www-form-urlencoded"})
    assert client.post("/webhooks/dms", content=body, headers=h).status_code == 415
    assert events == []


def test_multipart_upload_is_stored_then_queued(env):
    client, events, _, stores, photo = env
    # Build the multipart body ourselves: the signature covers the exact bytes sent.
    boundary = "fwboundary1234"
    data = photo.read_bytes()
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="correlation_id"\r\n\r\nup-1\r\n'
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="scan 1.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    h = headers(body, **{"Content-Type": f"multipart/form-data; boundary={boundary}"})
    resp = client.post("/webhooks/dms", content=body, headers=h)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    ev = events[0]
    assert ev.store == "raw" and ev.key == f"dms-uploads/{job_id}/scan 1.jpg"
    assert ev.hints["correlation_id"] == "up-1"
    assert stores["raw"].get(ev.key) == data

    # A non-image part is refused, and so is a name with '..'.
    bad = body.replace(b"Content-Type: image/jpeg", b"Content-Type: text/html")
    h = headers(bad, **{"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert client.post("/webhooks/dms", content=bad, headers=h).status_code == 415
    evil = body.replace(b'filename="scan 1.jpg"', b'filename="x.jpg"').replace(
        b'name="correlation_id"\r\n\r\nup-1', b'name="key"\r\n\r\n../../evil.jpg'
    )
    h = headers(evil, **{"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert client.post("/webhooks/dms", content=evil, headers=h).status_code == 400
    assert len(events) == 1


def test_config_errors_name_the_key(tmp_path):
    stores = {"raw": LocalStore("raw", tmp_path)}
    ctx = SourceContext(stores=stores, settings=None)
    with pytest.raises(ConfigError, match=r"sources\[dms\]\.secret"):
        build_source(dict(type="dms-webhook", name="dms", store="raw"), ctx)
    with pytest.raises(ConfigError, match=r"sources\[dms\]\.raw_store"):
        build_source(
            dict(
                type="dms-webhook", name="dms", secret=SECRET.decode(), raw_store="nope"
            ),
            ctx,
        )
    with pytest.raises(ConfigError, match=r"sources\[dms\]\.bogus"):
        build_source(
            dict(
                type="dms-webhook", name="dms", secret=SECRET.decode(), store="raw", bogus=1
            ),
            ctx,
        )


# -- end to end: daemon + RabbitMQ + worker process + real model ----------------------------


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_webhook_to_result_through_the_daemon_on_rabbitmq(tmp_path, face_photo, models_dir):
    import fixtures_rabbit
    import httpx

    from facewarden.config.schema import Settings
    from facewarden.daemon.app import Daemon

    url = fixtures_rabbit.ensure_broker()
    cfg = fixtures_rabbit.unique_cfg(url)
    settings = Settings.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "models_dir": str(models_dir),
            "stores": {
                "raw": {"type": "local", "root": str(tmp_path / "raw")},
                "out": {"type": "local", "root": str(tmp_path / "out")},
            },
            "sources": [
                {
                    "type": "dms-webhook",
                    "name": "dms",
                    "secret": SECRET.decode(),
                    "store": "raw",
                    "raw_store": "raw",
                }
            ],
            "routes": [{"source": "dms", "handler": "anonymize", "target": "out"}],
            "queue": {"backend": "rabbitmq", "rabbitmq": cfg.model_dump()},
            "workers": {"count": 1},
            "http": {"enabled": True, "port": 0},
            "log": {"format": "json", "level": "warning"},
        }
    )
    LocalStore("raw", tmp_path / "raw").put("in/photo.jpg", face_photo.read_bytes())
    daemon = Daemon(settings)
    daemon.start()
    try:
        base = daemon.http.url
        body = json.dumps({"key": "in/photo.jpg", "correlation_id": "e2e"}).encode()
        h = headers(body, **{"Content-Type": "application/json"})
        resp = httpx.post(f"{base}/webhooks/dms", content=body, headers=h)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        path = f"/jobs/{job_id}"
        deadline = time.monotonic() + 180
        while True:
            ts = str(int(time.time()))
            sig = sign(SECRET, ts, f"GET {path}".encode())
            got = httpx.get(
                base + path, headers={"X-Facewarden-Timestamp": ts, "X-Facewarden-Signature": sig}
            )
            if got.status_code == 200 and got.json()["state"] == "done":
                break
            assert got.status_code in (200, 404), got.text
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.3)
        status = got.json()
        assert status["outcome"] == "ok"
        assert status["outputs"][0]["key"] == "in/photo.jpg"
        assert LocalStore("out", tmp_path / "out").stat("in/photo.jpg") is not None
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert "facewarden_queue_depth" in httpx.get(f"{base}/metrics").text
    finally:
        daemon.stop()
        fixtures_rabbit.delete_topology(url, cfg)
