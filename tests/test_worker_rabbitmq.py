"""`facewarden worker` hosts on a real RabbitMQ, running the real pipeline and models on
real photos: two hosts share one queue and do every job once; a worker process killed
with SIGKILL in the middle of a job gets its job redelivered and the result is written
exactly once."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fixtures_rabbit
import pytest
from PIL import Image

from facewarden.daemon.jobs import Job
from facewarden.daemon.queues.rabbitmq import RabbitMQQueue
from facewarden.storage.audit import AuditLog
from facewarden.storage.local import LocalStore

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
rabbit_url = fixtures_rabbit.rabbit_url
rabbit_cfg = fixtures_rabbit.rabbit_cfg
REPO = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, cfg, models_dir: Path) -> Path:
    text = f"""
state_dir = "{tmp / "state"}"
models_dir = "{models_dir}"

[stores.raw]
type = "local"
root = "{tmp / "raw"}"

[stores.out]
type = "local"
root = "{tmp / "out"}"

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

[log]
format = "json"
level = "info"
"""
    path = tmp / "worker.toml"
    path.write_text(text)
    return path


def start_host(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from facewarden.cli import main; main()",
            "worker",
            "--config",
            str(config),
            "--concurrency",
            "1",
        ],
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_host(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(entry.name))
    return out


def wait_done(
    audit: AuditLog,
    jobs: list[Job],
    hosts: list[subprocess.Popen],
    logs: list[Path],
    timeout: float = 240,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(audit.find_job(j.id) is not None for j in jobs):
            return
        for proc, log in zip(hosts, logs, strict=True):
            if proc.poll() is not None:
                pytest.fail(f"worker host exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    pytest.fail("jobs not finished in time:\n" + "\n".join(p.read_text()[-2000:] for p in logs))


def test_two_worker_hosts_share_the_queue_and_do_each_job_once(rabbit_cfg, tmp_path, data_dir, models_dir):
    config = write_config(tmp_path, rabbit_cfg, models_dir)
    raw = LocalStore("raw", tmp_path / "raw")
    photos = sorted((data_dir / "faces-pascal").glob("*.jpg"))[:6]
    queue = RabbitMQQueue(rabbit_cfg)
    jobs = []
    for p in photos:
        raw.put(p.name, p.read_bytes(), content_type="image/jpeg")
        job = Job(handler="anonymize", params={}, store="raw", key=p.name, target="out")
        queue.put(job)
        jobs.append(job)
    logs = [tmp_path / "host1.log", tmp_path / "host2.log"]
    audit = AuditLog(tmp_path / "state")
    audit.count()  # create the db first: see the AuditLog first-open race in the report
    hosts = [start_host(config, log) for log in logs]
    try:
        wait_done(audit, jobs, hosts, logs)
    finally:
        for h in hosts:
            stop_host(h)
        queue.close()
    out = LocalStore("out", tmp_path / "out")
    for job in jobs:
        records = [r for r in audit.by_key(job.key) if r.get("job_id") == job.id]
        assert len(records) == 1, f"{job.key}: {len(records)} audit records"
        assert records[0]["outcome"] == "ok"
        assert out.stat(job.key) is not None
    assert audit.verify().ok
    assert queue_is_empty(rabbit_cfg)


def queue_is_empty(cfg) -> bool:
    q = RabbitMQQueue(cfg)
    try:
        return q.depth() == 0 and q.get("check", timeout=0.5) is None
    finally:
        q.close()


def test_worker_killed_mid_job_is_redelivered_and_result_written_once(rabbit_cfg, tmp_path, face_photo, models_dir):
    config = write_config(tmp_path, rabbit_cfg, models_dir)
    raw = LocalStore("raw", tmp_path / "raw")
    # A large real photo so that the job is surely still running when the worker is killed.
    img = Image.open(face_photo)
    big = img.resize((img.width * 5, img.height * 5), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    raw.put("big.jpg", buf.getvalue(), content_type="image/jpeg")
    log = tmp_path / "host.log"
    host = start_host(config, log)
    queue = RabbitMQQueue(rabbit_cfg)
    audit = AuditLog(tmp_path / "state")
    try:
        # Wait until the worker process is up and consuming before queueing the job.
        deadline = time.monotonic() + 180
        while b"worker.ready" not in log.read_bytes():
            assert host.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "worker did not become ready"
            time.sleep(0.2)
        workers = children(host.pid)
        job = Job(handler="anonymize", params={}, store="raw", key="big.jpg", target="out")
        queue.put(job)
        while queue.depth() > 0:  # delivered (unacked) to the worker
            time.sleep(0.01)
        victims = [pid for pid in children(host.pid) if pid in workers]
        assert victims, "no worker process found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert audit.find_job(job.id) is None, "the job finished before the kill; test inconclusive"
        wait_done(audit, [job], [host], [log])
    finally:
        stop_host(host)
        queue.close()
    records = [r for r in audit.by_key("big.jpg") if r.get("job_id") == job.id]
    assert len(records) == 1
    assert records[0]["outcome"] == "ok"
    assert records[0]["attempt"] == 2  # the second delivery did it
    assert LocalStore("out", tmp_path / "out").stat("big.jpg") is not None
    assert b"worker.died" in log.read_bytes()
    assert queue_is_empty(rabbit_cfg)
