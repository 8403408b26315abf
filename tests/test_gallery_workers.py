"""Two `facewarden worker` hosts, each with its own state dir and queue, share one
PostgreSQL gallery: people enrolled through host A are checked in by host B, and an
erasure made from host A's side is honoured by host B. Real RabbitMQ, real PostgreSQL,
real models on real photos (identities-knn)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import fixtures_pg
import fixtures_rabbit
import pytest

from facewarden.daemon.jobs import Job
from facewarden.daemon.queues.rabbitmq import RabbitMQQueue
from facewarden.storage.audit import AuditLog
from facewarden.storage.local import LocalStore

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]
rabbit_url = fixtures_rabbit.rabbit_url
rabbit_cfg = fixtures_rabbit.rabbit_cfg
pg_gallery_urls = fixtures_pg.pg_gallery_urls
REPO = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, host: str, cfg, models_dir: Path, db, key_file: Path) -> Path:
    text = f"""
state_dir = "{tmp / host / "state"}"
models_dir = "{models_dir}"

[stores.raw]
type = "local"
root = "{tmp / "raw"}"

[stores.out]
type = "local"
root = "{tmp / host / "out"}"

[queue]
backend = "rabbitmq"

[queue.rabbitmq]
url = "{cfg.url}"
queue = "{cfg.queue}"
exchange = "{cfg.exchange}"
dead_letter_exchange = "{cfg.dead_letter_exchange}"
results_exchange = "{cfg.results_exchange}"
delivery_limit = {cfg.delivery_limit}
heartbeat = 10

[workers]
count = 1
max_attempts = 3
job_timeout = 120

[gallery]
url = "{db.url}"
keys_url = "{db.keys_url}"
key_file = "{key_file}"

[log]
format = "json"
level = "info"
"""
    path = tmp / f"{host}.toml"
    path.write_text(text)
    return path


def start_host(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facewarden", "worker", "--config", str(config),
                             "--concurrency", "1"], cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_jobs(audit: AuditLog, jobs: list[Job], proc: subprocess.Popen, log: Path, timeout: float = 300) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [audit.find_job(j.id) for j in jobs]
        if all(found):
            return found
        if proc.poll() is not None:
            pytest.fail(f"worker host exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    pytest.fail("jobs not finished in time:\n" + log.read_text()[-3000:])


def test_enrolled_on_one_host_checked_in_on_another_and_erased_everywhere(rabbit_url, rabbit_cfg, pg_gallery_urls,
                                                                         tmp_path, data_dir, models_dir):
    knn = data_dir / "identities-knn"
    key_file = tmp_path / "gallery.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    verify_cfg = fixtures_rabbit.unique_cfg(rabbit_url, delivery_limit=2)
    configs = {"a": write_config(tmp_path, "a", rabbit_cfg, models_dir, pg_gallery_urls, key_file),
               "b": write_config(tmp_path, "b", verify_cfg, models_dir, pg_gallery_urls, key_file)}
    raw = LocalStore("raw", tmp_path / "raw")
    enrol_jobs = []
    for person in ("obama", "biden"):
        for photo in sorted((knn / "train" / person).glob("*.jpg")):
            key = f"enroll/{person}/{photo.name}"
            raw.put(key, photo.read_bytes(), content_type="image/jpeg")
            enrol_jobs.append(Job(handler="enroll", params={}, store="raw", key=key, target="out"))
    for name in ("obama_and_biden.jpg", "obama1.jpg"):
        raw.put(f"door/{name}", (knn / "test" / name).read_bytes(), content_type="image/jpeg")
    logs = {h: tmp_path / f"host-{h}.log" for h in configs}
    audits = {h: AuditLog(tmp_path / h / "state") for h in configs}
    for a in audits.values():
        a.count()
    hosts = {h: start_host(configs[h], logs[h]) for h in configs}
    q_enrol, q_verify = RabbitMQQueue(rabbit_cfg), RabbitMQQueue(verify_cfg)
    try:
        for job in enrol_jobs:
            q_enrol.put(job)
        records = wait_jobs(audits["a"], enrol_jobs, hosts["a"], logs["a"])
        assert [r["outcome"] for r in records] == ["ok"] * len(enrol_jobs)
        assert not (tmp_path / "b" / "state" / "gallery.db").exists()  # host B has no gallery of its own

        def check_in(name: str) -> dict:
            job = Job(handler="verify", params={}, store="raw", key=f"door/{name}", target="out")
            q_verify.put(job)
            (record,) = wait_jobs(audits["b"], [job], hosts["b"], logs["b"])
            assert record["outcome"] == "ok", record
            return json.loads((tmp_path / "b" / "out" / "door" / name.replace(".jpg", "-checkin.json")).read_text())

        checkin = check_in("obama_and_biden.jpg")
        assert checkin["known"] == ["biden", "obama"] and checkin["unknown"] == 1
        erase = subprocess.run([sys.executable, "-m", "facewarden", "subjects", "delete", "obama", "--config",
                                str(configs["a"])], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert erase.returncode == 0, erase.stderr
        time.sleep(1.0)  # the bound: an erasure is honoured everywhere within 1 s
        after = check_in("obama1.jpg")
        assert after["known"] == [] and after["unknown"] == 1
    finally:
        for proc in hosts.values():
            fixtures_rabbit_stop(proc)
        q_enrol.close()
        q_verify.close()
        fixtures_rabbit.delete_topology(rabbit_url, verify_cfg)
    tombstones = [t for t in (json.loads(r[2]) for r in audits["a"].iter_records()) if t["kind"] == "subject.deleted"]
    assert [t["subject"] for t in tombstones] == ["obama"]
    for h in configs:  # no embedding value and no vector key in any audit record or log line
        text = logs[h].read_text() + "".join(r[2] for r in audits[h].iter_records())
        assert '"embedding"' not in text and '"vector"' not in text


def fixtures_rabbit_stop(proc: subprocess.Popen) -> None:
    import os
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
