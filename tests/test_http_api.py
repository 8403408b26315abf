"""The HTTP API over real HTTP: a real daemon (SQLite queue, one worker process, HTTP on a
loopback port) answers /api/v1 like any client would see it; real photos from ../shared."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
import zipfile
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
    assert record["by"] == "api:test-anonymize"  # the key that asked, by name
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


KNN = DATA / "identities-knn"
DEMO = DATA / "idphoto-specs" / "demo" / "images"


def test_idphoto_sync(server):
    r = httpx.post(f"{server['url']}/idphoto", content=(DEMO / "test0.jpg").read_bytes(), timeout=180,
                   headers={"Content-Type": "image/jpeg", **auth(server, "idphoto")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/")
    Image.open(io.BytesIO(r.content)).verify()
    assert AuditLog(server["state"]).find_job(r.headers["x-job-id"])["handler"] == "idphoto"


def test_enroll_checkin_and_subject_admin(server):
    url = server["url"]
    for photo in sorted((KNN / "train" / "obama").glob("*.jpg")):
        r = httpx.post(f"{url}/subjects/obama/photos", files={"image": (photo.name, photo.read_bytes())},
                       headers=auth(server, "enroll"), timeout=180)
        assert r.status_code == 200, r.text
        assert r.json()["facts"]["subject"] == "obama"
    r = httpx.post(f"{url}/checkin", content=(KNN / "test" / "obama1.jpg").read_bytes(), timeout=180,
                   headers={"Content-Type": "image/jpeg", **auth(server, "checkin")})
    assert r.status_code == 200, r.text
    assert "obama" in json.dumps(r.json()["result"])
    r = httpx.post(f"{url}/checkin", content=(KNN / "test" / "alex_lacamoire1.jpg").read_bytes(), timeout=180,
                   headers={"Content-Type": "image/jpeg", **auth(server, "checkin")})
    assert r.status_code == 200 and "obama" not in json.dumps(r.json()["result"])
    listed = httpx.get(f"{url}/subjects", headers=auth(server, "enroll")).json()
    assert [s["id"] for s in listed] == ["obama"] and "vector" not in json.dumps(listed)
    assert httpx.get(f"{url}/subjects/obama", headers=auth(server, "enroll")).json()["embeddings"]
    assert httpx.get(f"{url}/subjects/obama/export", headers=auth(server, "enroll")).status_code == 403
    export = httpx.get(f"{url}/subjects/obama/export", headers=auth(server, "admin")).json()
    assert export["embeddings"] and export["embeddings"][0]["vector"]
    assert httpx.delete(f"{url}/subjects/obama", headers=auth(server, "enroll")).status_code == 403
    gone = httpx.delete(f"{url}/subjects/obama", headers=auth(server, "admin"))
    assert gone.status_code == 200 and gone.json()["embeddings_removed"] >= 2
    assert httpx.get(f"{url}/subjects/obama", headers=auth(server, "enroll")).status_code == 404
    tomb = AuditLog(server["state"]).count()
    assert tomb == gone.json()["audit"]["seq"]


def _wait_done(server, job_id, scope="anonymize", timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = httpx.get(f"{server['url']}/jobs/{job_id}", headers=auth(server, scope)).json()
        if status["state"] == "done":
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not done: {status}")


def test_async_job_goes_through_the_queue(server):
    r = httpx.post(f"{server['url']}/anonymize?async=true", content=PHOTO.read_bytes(),
                   headers={"Content-Type": "image/jpeg", **auth(server)})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    # another key may not see it
    assert httpx.get(f"{server['url']}/jobs/{job_id}", headers=auth(server, "idphoto")).status_code == 404
    status = _wait_done(server, job_id)
    assert status["outcome"] == "ok" and status["faces"] >= 1
    record = AuditLog(server["state"]).find_job(job_id)
    assert record["source"] == "api" and record["host"]
    result = httpx.get(f"{server['url']}/jobs/{job_id}/result", headers=auth(server))
    assert result.status_code == 200 and result.headers["x-audit-hash"] == record["hash"]
    assert hashlib.sha256(result.content).hexdigest() == record["outputs"][0]["sha256"]


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_batch_zip_in_zip_out(server):
    photos = sorted((KNN / "test").glob("*.jpg"))[:2]
    archive = _zip({f"set/{p.name}": p.read_bytes() for p in photos} | {"set/notes.txt": b"skip me",
                                                                        "bad.jpg": b"not an image"})
    r = httpx.post(f"{server['url']}/batch?handler=anonymize", content=archive, timeout=60,
                   headers={"Content-Type": "application/zip", **auth(server)})
    assert r.status_code == 202, r.text
    batch_id = r.json()["job_id"]
    status = _wait_done(server, batch_id)
    assert status["total"] == 3 and status["outcomes"] == {"ok": 2, "rejected": 1}
    out = httpx.get(f"{server['url']}/jobs/{batch_id}/result", headers=auth(server), timeout=60)
    assert out.status_code == 200 and out.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(out.content))
    names = zf.namelist()
    assert {f"results/set/{p.name}" for p in photos} <= set(names)
    assert "summary.csv" in names and sum(n.startswith("audit/") for n in names) == 3
    summary = zf.read("summary.csv").decode()
    assert "input.not_an_image" in summary and "bad.jpg" in summary
    audit = json.loads(zf.read(next(n for n in names if n.startswith("audit/"))))
    assert AuditLog(server["state"]).find_job(audit["job_id"])["hash"] == audit["hash"]


@pytest.mark.parametrize("name", ["../evil.jpg", "/etc/evil.jpg", "a/../../evil.jpg"])
def test_batch_refuses_path_traversal(server, name):
    archive = _zip({name: PHOTO.read_bytes()})
    r = httpx.post(f"{server['url']}/batch?handler=anonymize", content=archive,
                   headers={"Content-Type": "application/zip", **auth(server)})
    assert r.status_code == 422 and r.json()["error"] == "batch.unsafe_path"
    assert not (server["state"] / "evil.jpg").exists()


def test_batch_refuses_zip_bomb(server):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.jpg", b"\0" * (1100 * 1024 * 1024 // 8))  # small on the wire
        for i in range(9):
            zf.writestr(f"bomb{i}.jpg", b"\0" * (1100 * 1024 * 1024 // 8))
    assert len(buf.getvalue()) < 8 * 1024 * 1024
    r = httpx.post(f"{server['url']}/batch?handler=anonymize", content=buf.getvalue(), timeout=60,
                   headers={"Content-Type": "application/zip", **auth(server)})
    assert r.status_code == 422 and r.json()["error"] == "batch.too_large"
    r = httpx.post(f"{server['url']}/batch?handler=anonymize", content=b"PK not really",
                   headers={"Content-Type": "application/zip", **auth(server)})
    assert r.status_code == 422 and r.json()["error"] == "batch.not_zip"


def test_quarantine_list_show_release_purge_retry(server):
    url = server["url"]
    seqs = []
    for i in range(3):
        r = httpx.post(f"{url}/anonymize?filename=broken{i}.jpg", content=b"garbage %d" % i * 50,
                       headers={"Content-Type": "image/jpeg", **auth(server)})
        assert r.status_code == 415
        seqs.append(r.json()["audit"]["seq"])
    listed = httpx.get(f"{url}/quarantine", headers=auth(server, "admin")).json()
    assert set(seqs) <= {e["seq"] for e in listed}
    shown = httpx.get(f"{url}/quarantine/{seqs[0]}", headers=auth(server, "admin")).json()
    assert shown["open"] and shown["present"] and shown["record"]["reason"]["code"] == "input.not_an_image"
    assert httpx.post(f"{url}/quarantine/{seqs[0]}/release", headers=auth(server, "admin")).status_code == 422
    released = httpx.post(f"{url}/quarantine/{seqs[0]}/release?reason=owner+asked", headers=auth(server, "admin"))
    assert released.status_code == 200 and released.content == b"garbage 0" * 50
    purged = httpx.delete(f"{url}/quarantine/{seqs[1]}", headers=auth(server, "admin"))
    assert purged.status_code == 200
    retried = httpx.post(f"{url}/quarantine/{seqs[2]}/retry", headers=auth(server, "admin"), timeout=60)
    assert retried.status_code == 200, retried.text
    assert retried.json()["outcome"] == "rejected"  # still not an image: a new entry, not an output
    open_now = {e["seq"] for e in httpx.get(f"{url}/quarantine", headers=auth(server, "admin")).json()}
    assert not set(seqs) & open_now
    assert retried.json()["record"] in open_now
    audit = AuditLog(server["state"])
    actions = [json.loads(t) for _s, _l, t, _d in audit.iter_records()]
    assert {a.get("action") for a in actions if a.get("kind") == "quarantine"} >= {"release", "purge", "retry"}
    assert any(a.get("by") == "api:test-admin" for a in actions if a.get("action") == "release")
    assert audit.verify().ok


def test_apikeys_cli_shows_the_token_once_and_revokes(server):
    from click.testing import CliRunner

    from facewarden.cli import cli

    runner = CliRunner()
    made = runner.invoke(cli, ["apikeys", "create", "kiosk-2", "--scope", "checkin", "--state", str(server["state"])])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[0]
    assert token.startswith("fwk_")
    listed = runner.invoke(cli, ["apikeys", "list", "--json", "--state", str(server["state"])])
    keys = json.loads(listed.stdout)
    assert token not in listed.stdout and any(k["name"] == "kiosk-2" and k["scopes"] == ["checkin"] for k in keys)
    who = httpx.get(f"{server['url']}/whoami", headers={"Authorization": f"Bearer {token}"})
    assert who.status_code == 200 and who.json()["name"] == "kiosk-2"  # the running daemon sees it at once
    key_id = next(k["id"] for k in keys if k["name"] == "kiosk-2")
    assert runner.invoke(cli, ["apikeys", "revoke", key_id, "--state", str(server["state"])]).exit_code == 0
    assert httpx.get(f"{server['url']}/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    bad = runner.invoke(cli, ["apikeys", "create", "x", "--scope", "root", "--state", str(server["state"])])
    assert bad.exit_code != 0


def test_console_cookie_needs_the_console_header_for_changes(server):
    token = server["tokens"]["admin"]
    cookies = {"fw_session": token}
    r = httpx.post(f"{server['url']}/anonymize", content=PHOTO.read_bytes(), cookies=cookies,
                   headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 403 and r.json()["error"] == "auth.csrf"
    assert httpx.get(f"{server['url']}/quarantine", cookies=cookies).status_code == 200
