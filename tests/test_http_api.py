"""The HTTP API over real HTTP: a real daemon (SQLite queue, one worker process, HTTP on a
loopback port) answers /api/v1 like any client would see it; real photos from ../shared."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from facewarden.config import load_settings
from facewarden.daemon.app import Daemon
from facewarden.storage.audit import AuditLog
from facewarden.web.auth import KeyStore

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _photo() -> Path:
    for pattern in ("**/*group*.jp*g", "**/*.jpg", "**/*.jpeg"):
        found = sorted(DATA.glob(pattern))
        if found:
            return found[0]
    raise AssertionError(f"no photos under {DATA}")


PHOTO = _photo()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("api-state")
    settings = load_settings(None, environ={}, overrides={
        "state_dir": state, "http": {"enabled": True, "port": 0, "max_body_bytes": 8 * 1024 * 1024},
        "workers": {"count": 1}})
    keys = KeyStore(state)
    tokens = {scope: keys.create(f"test-{scope}", [scope])[0]
              for scope in ("anonymize", "idphoto", "enroll", "checkin", "admin")}
    daemon = Daemon(settings)
    daemon.start()
    try:
        yield {"url": daemon.http.url + "/api/v1", "root": daemon.http.url, "tokens": tokens, "state": state,
               "daemon": daemon}
    finally:
        daemon.stop()


def auth(server, scope="anonymize"):
    return {"Authorization": f"Bearer {server['tokens'][scope]}"}


def test_no_key_is_401_and_wrong_scope_is_403(server):
    data = PHOTO.read_bytes()
    r = httpx.post(f"{server['url']}/anonymize", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 401 and r.json()["error"] == "auth.missing"
    r = httpx.post(f"{server['url']}/anonymize", content=data,
                   headers={"Content-Type": "image/jpeg", "Authorization": "Bearer fwk_nope_nope"})
    assert r.status_code == 401 and r.json()["error"] == "auth.invalid"
    r = httpx.post(f"{server['url']}/anonymize", content=data,
                   headers={"Content-Type": "image/jpeg", **auth(server, "idphoto")})
    assert r.status_code == 403 and r.json()["error"] == "auth.scope"
    r = httpx.get(f"{server['url']}/quarantine", headers=auth(server, "anonymize"))
    assert r.status_code == 403
    # health and metrics stay open and separate
    assert httpx.get(f"{server['root']}/healthz").status_code == 200
    assert httpx.get(f"{server['root']}/metrics").status_code == 200


def test_keys_are_stored_hashed(server):
    text = (server["state"] / "api" / "keys.json").read_text()
    for token in server["tokens"].values():
        assert token not in text
        assert hashlib.sha256(token.encode()).hexdigest() in text


def test_sync_anonymize_raw_body_changes_faces_and_is_audited(server):
    data = PHOTO.read_bytes()
    r = httpx.post(f"{server['url']}/anonymize", content=data, timeout=120,
                   headers={"Content-Type": "image/jpeg", **auth(server)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    faces = int(r.headers["x-faces"])
    assert faces >= 1
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    orig = np.asarray(Image.open(PHOTO).convert("RGB")).astype(int)
    assert out.shape == orig.shape and np.abs(out - orig).mean() > 0.1
    seq, digest = int(r.headers["x-audit-seq"]), r.headers["x-audit-hash"]
    audit = AuditLog(server["state"])
    record = audit.find_job(r.headers["x-job-id"])
    assert record["seq"] == seq and record["hash"] == digest and record["source"] == "api"
    assert record["outputs"][0]["sha256"] == hashlib.sha256(r.content).hexdigest()
    assert record["input"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert audit.verify().ok
    # the upload and the result are gone from the state dir once answered
    assert not any(p.is_file() for p in (server["state"] / "api-uploads").rglob("*"))
    assert not any(p.is_file() for p in (server["state"] / "api-results").rglob(r.headers["x-job-id"] + "*"))


def test_sync_multipart_and_json_base64_with_params(server):
    data = PHOTO.read_bytes()
    r = httpx.post(f"{server['url']}/anonymize", files={"image": (PHOTO.name, data, "image/jpeg")},
                   data={"mode": "pixelate"}, headers=auth(server), timeout=120)
    assert r.status_code == 200, r.text
    record = AuditLog(server["state"]).find_job(r.headers["x-job-id"])
    assert record["params"]["mode"] == "pixelate"
    r = httpx.post(f"{server['url']}/anonymize?mode=fill", json={"image_base64": base64.b64encode(data).decode()},
                   headers=auth(server), timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["audit"]["seq"] >= 1 and body["facts"]["mode"] == "fill"
    Image.open(io.BytesIO(base64.b64decode(body["outputs"][0]["base64"]))).verify()


def test_detect_returns_boxes(server):
    r = httpx.post(f"{server['url']}/detect", content=PHOTO.read_bytes(), timeout=120,
                   headers={"Content-Type": "image/jpeg", **auth(server)})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["faces"] and all({"x", "y", "w", "h", "score"} <= set(f) for f in result["faces"])
    w, h = Image.open(PHOTO).size
    assert result["width"] == w and result["height"] == h


def test_bad_params_bad_image_and_limits(server):
    url = f"{server['url']}/anonymize"
    before = AuditLog(server["state"]).count()
    r = httpx.post(url + "?mode=smear", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg",
                                                                            **auth(server)})
    assert r.status_code == 422 and r.json()["error"].startswith("params.")
    assert AuditLog(server["state"]).count() == before  # refused before anything was written
    r = httpx.post(url, content=b"this is not an image at all" * 10, timeout=60,
                   headers={"Content-Type": "image/jpeg", **auth(server)})
    assert r.status_code == 415 and r.json()["error"] == "input.not_an_image"
    assert r.json()["message"]
    assert not any(p.is_file() for p in (server["state"] / "api-results").rglob("*"))
    r = httpx.post(url, content=b"x" * 100, headers={"Content-Type": "text/plain", **auth(server)})
    assert r.status_code == 415 and r.json()["error"] == "input.unsupported_media_type"
    r = httpx.post(url, content=b"x" * (9 * 1024 * 1024), headers={"Content-Type": "image/jpeg", **auth(server)})
    assert r.status_code == 413 and r.json()["error"] == "input.too_large"
    # the server is unaffected
    r = httpx.post(url, content=PHOTO.read_bytes(), timeout=120, headers={"Content-Type": "image/jpeg",
                                                                          **auth(server)})
    assert r.status_code == 200


def test_openapi_and_docs_page(server):
    spec = httpx.get(f"{server['url']}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/anonymize", "/idphoto", "/detect", "/checkin", "/subjects/{subject_id}/photos", "/batch",
                 "/jobs/{job_id}", "/quarantine"):
        assert path in spec["paths"]
    docs = httpx.get(f"{server['url']}/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
    assert not re.search(r'(src|href)="(https?:)?//', docs.text)  # nothing from elsewhere
