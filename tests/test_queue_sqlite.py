"""The embedded durable queue: leasing, dedup, retries, give-backs, durability, and two
processes leasing at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import pytest

from facewarden.daemon.jobs import Job
from facewarden.daemon.queues.sqlite import SqliteQueue

REASON = {"code": "worker.died", "message": "the worker process exited"}


def _job(key: str = "a.jpg", **kw) -> Job:
    return Job(handler="anonymize", params={}, store="incoming", key=key, target="outgoing", **kw)


@pytest.fixture
def queue(state_dir: Path):
    q = SqliteQueue(state_dir / "queue.db", poll_interval=0.01)
    yield q
    q.close()


def test_put_get_ack(queue: SqliteQueue):
    job = _job("sub/ä b.jpg")
    assert queue.put(job) is True
    assert queue.depth() == 1
    lease = queue.get("w1", timeout=0)
    assert lease is not None
    assert lease.job.id == job.id and lease.job.key == "sub/ä b.jpg" and lease.delivery == 1
    assert queue.job_state(job.id) == "leased"
    assert queue.get("w2", timeout=0) is None  # a leased job is nobody else's
    queue.ack(lease)
    assert queue.depth() == 0 and queue.job_state(job.id) is None
    assert queue.get("w1", timeout=0.05) is None


def test_get_waits_for_a_job_put_meanwhile(queue: SqliteQueue, state_dir: Path):
    other = SqliteQueue(state_dir / "queue.db")
    assert queue.get("w1", timeout=0.05) is None
    other.put(_job())
    lease = queue.get("w1", timeout=2)
    assert lease is not None
    other.close()


def test_fifo_by_due_time(queue: SqliteQueue):
    jobs = [_job(f"{i}.jpg") for i in range(3)]
    for j in jobs:
        queue.put(j)
        time.sleep(0.002)
    got = [queue.get("w", timeout=0).job.key for _ in jobs]
    assert got == ["0.jpg", "1.jpg", "2.jpg"]


def test_dedup(queue: SqliteQueue):
    assert queue.put(_job("a.jpg"), dedup="incoming:a.jpg:100-1") is True
    assert queue.put(_job("a.jpg"), dedup="incoming:a.jpg:100-1") is False
    assert queue.put(_job("a.jpg"), dedup="incoming:a.jpg:200-2") is True  # a new version
    assert queue.depth() == 2
    # Dedup outlives the job: the same event after the job was done is still dropped.
    while (lease := queue.get("w", timeout=0)) is not None:
        queue.ack(lease)
    assert queue.put(_job("a.jpg"), dedup="incoming:a.jpg:100-1") is False
    assert queue.depth() == 0


def test_retry_is_due_later_and_carries_the_reason(queue: SqliteQueue):
    job = _job()
    queue.put(job)
    lease = queue.get("w1", timeout=0)
    queue.retry(lease, reason={"code": "store.error", "message": "flaky"}, delay=0.4)
    assert queue.job_state(job.id) == "ready"
    assert queue.get("w1", timeout=0) is None  # not yet due
    again = queue.get("w1", timeout=5)
    assert again is not None and again.job.id == job.id
    assert again.delivery == 2
    assert again.job.attempts == 1
    assert again.job.last_error == {"code": "store.error", "message": "flaky"}


def test_release_owner_gives_back_only_that_workers_jobs(queue: SqliteQueue):
    for i in range(3):
        queue.put(_job(f"{i}.jpg"))
    a1, a2 = queue.get("A", timeout=0), queue.get("A", timeout=0)
    b = queue.get("B", timeout=0)
    assert queue.release_owner("A", reason=REASON) == 2
    assert queue.job_state(a1.job.id) == queue.job_state(a2.job.id) == "ready"
    assert queue.job_state(b.job.id) == "leased"
    back = {queue.get("C", timeout=0).job.id, queue.get("C", timeout=0).job.id}
    assert back == {a1.job.id, a2.job.id}
    again = queue.get("C", timeout=0)
    assert again is None


def test_release_owner_with_delay_and_reason(queue: SqliteQueue):
    job = _job()
    queue.put(job)
    queue.get("A", timeout=0)
    assert queue.release_owner("A", reason=REASON, delay=0.3) == 1
    assert queue.get("B", timeout=0) is None
    lease = queue.get("B", timeout=5)
    assert lease.job.last_error == REASON and lease.job.attempts == 1 and lease.delivery == 2


def test_release_all_at_start_up(state_dir: Path):
    q = SqliteQueue(state_dir / "queue.db")
    for i in range(4):
        q.put(_job(f"{i}.jpg"))
    q.get("A", timeout=0)
    q.get("B", timeout=0)
    q.get("B", timeout=0)
    q.close()
    q2 = SqliteQueue(state_dir / "queue.db")
    assert q2.release_all(reason=REASON) == 3
    assert q2.leases_older_than(0) == []
    assert sum(1 for _ in iter(lambda: q2.get("C", timeout=0), None)) == 4
    q2.close()


def test_leases_older_than(queue: SqliteQueue):
    old, new = _job("old.jpg"), _job("new.jpg")
    queue.put(old)
    queue.get("A", timeout=0)
    time.sleep(0.3)
    queue.put(new)
    queue.get("B", timeout=0)
    assert queue.leases_older_than(0.2) == [("A", old.id)]
    assert sorted(queue.leases_older_than(0)) == sorted([("A", old.id), ("B", new.id)])
    assert queue.leases_older_than(60) == []


def test_job_survives_closing_and_reopening(state_dir: Path):
    path = state_dir / "queue.db"
    q = SqliteQueue(path)
    job = _job("kept.jpg", hints={"event_at": 1.5, "source": "incoming"})
    q.put(job, dedup="d1")
    q.close()
    # What is on disk, read by another connection, already holds the job.
    raw = sqlite3.connect(path).execute("SELECT id FROM jobs").fetchall()
    assert raw == [(job.id,)]
    q2 = SqliteQueue(path)
    assert q2.depth() == 1
    assert q2.put(_job("kept.jpg"), dedup="d1") is False
    lease = q2.get("w", timeout=0)
    assert lease.job == job
    q2.close()


# -- two processes leasing at once -------------------------------------------------------
N_JOBS = 200


def _drain(path: str, worker: str, start, out) -> None:
    q = SqliteQueue(path, poll_interval=0.005)
    start.wait(60)  # both processes begin leasing together
    got = []
    while (lease := q.get(worker, timeout=0.3)) is not None:
        got.append(lease.job.id)
        time.sleep(0.002)  # "work", so the two processes interleave
        q.ack(lease)
    q.close()
    out.put(got)


@pytest.mark.slow
def test_two_processes_never_lease_the_same_job(state_dir: Path):
    path = state_dir / "queue.db"
    q = SqliteQueue(path)
    ids = set()
    for i in range(N_JOBS):
        job = _job(f"{i}.jpg")
        q.put(job)
        ids.add(job.id)
    q.close()
    ctx = mp.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_drain, args=(str(path), f"w{n}", start, out)) for n in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    a, b = results
    assert not set(a) & set(b), "a job was leased by both processes"
    assert len(a) + len(b) == N_JOBS and set(a) | set(b) == ids
    assert len(set(a)) == len(a) and len(set(b)) == len(b)
    assert a and b, "both processes should have leased jobs"
    assert SqliteQueue(path).depth() == 0
