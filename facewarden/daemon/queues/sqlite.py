"""The embedded durable queue: one SQLite file (WAL, synchronous=FULL) in the state dir.

A job is on disk before ``put`` returns. A leased job belongs to one worker until it is
acked or given back; leases of workers that died (crash, kill -9, OOM) are given back by
the supervisor, and all leases are given back at start-up, since the daemon that owns
this file is the only one that leases from it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from facewarden.daemon.jobs import Job
from facewarden.daemon.queues.base import QUEUES, Lease, Queue
from facewarden.errors import ProcessingFailed, QueueUnavailable
from facewarden.storage.sqlite_db import SharedDatabase

F = TypeVar("F", bound=Callable[..., Any])


def _classified(fn: F) -> F:
    """SQLite errors as queue errors that say whether waiting helps: a full or failing
    disk, a lock held too long (OperationalError) will pass; a corrupt file will not."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise QueueUnavailable(message=f"the embedded queue is unavailable: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise ProcessingFailed("queue.corrupt", f"the embedded queue file is damaged: {exc}",
                                   retryable=False) from exc

    return wrapper  # type: ignore[return-value]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    due REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'ready',
    owner TEXT,
    leased_at REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, due);
CREATE TABLE IF NOT EXISTS seen (
    dedup TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""


class SqliteQueue(Queue):
    @_classified
    def __init__(self, path: Path | str, *, poll_interval: float = 0.02):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        # The daemon's emit, HTTP handlers and the supervisor share this object.
        self._shared = SharedDatabase(self.path, _SCHEMA)
        self._shared.conn()

    def _db(self) -> sqlite3.Connection:
        return self._shared.conn()

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._shared.write()

    @_classified
    def put(self, job: Job, *, dedup: str | None = None) -> bool:
        now = time.time()
        with self._tx() as conn:
            if dedup is not None:
                cur = conn.execute("INSERT OR IGNORE INTO seen(dedup, at) VALUES (?, ?)", (dedup, now))
                if cur.rowcount == 0:
                    return False
            conn.execute("INSERT OR IGNORE INTO jobs(id, body, due, created) VALUES (?,?,?,?)",
                         (job.id, job.to_json(), now, now))
        return True

    def _try_lease(self, worker: str) -> Lease | None:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id, body, deliveries FROM jobs WHERE state='ready' AND due<=? ORDER BY due LIMIT 1",
                (now,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET state='leased', owner=?, leased_at=?, deliveries=deliveries+1 "
                         "WHERE id=?", (worker, now, row[0]))
        job = Job.from_json(row[1])
        return Lease(job=job, token=row[0], delivery=row[2] + 1)

    @_classified
    def get(self, worker: str, timeout: float) -> Lease | None:
        deadline = time.monotonic() + timeout
        while True:
            lease = self._try_lease(worker)
            if lease is not None or time.monotonic() >= deadline:
                return lease
            time.sleep(self.poll_interval)

    @_classified
    def ack(self, lease: Lease) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM jobs WHERE id=?", (lease.token,))

    @_classified
    def retry(self, lease: Lease, *, reason: dict[str, str], delay: float) -> None:
        lease.job.last_error = reason
        lease.job.attempts = lease.delivery
        with self._tx() as conn:
            conn.execute("UPDATE jobs SET state='ready', owner=NULL, leased_at=NULL, due=?, body=? WHERE id=?",
                         (time.time() + delay, lease.job.to_json(), lease.token))

    @_classified
    def release_owner(self, owner: str, *, reason: dict[str, str], delay: float = 0.0) -> int:
        """Gives back the jobs of a worker that is gone, noting why in each job."""
        with self._tx() as conn:
            rows = conn.execute("SELECT id, body, deliveries FROM jobs WHERE state='leased' AND owner=?",
                                (owner,)).fetchall()
            for job_id, body, deliveries in rows:
                data = json.loads(body)
                data["last_error"], data["attempts"] = reason, deliveries
                conn.execute("UPDATE jobs SET state='ready', owner=NULL, leased_at=NULL, due=?, body=? "
                             "WHERE id=?", (time.time() + delay, json.dumps(data), job_id))
        return len(rows)

    def release_all(self, *, reason: dict[str, str]) -> int:
        """At start-up: every lease belongs to a process of a previous run."""
        owners = [r[0] for r in self._db().execute(
            "SELECT DISTINCT owner FROM jobs WHERE state='leased'").fetchall()]
        return sum(self.release_owner(o, reason=reason) for o in owners)

    def leases_older_than(self, seconds: float) -> list[tuple[str, str]]:
        """(owner, job id) of leases held longer than ``seconds``: jobs that hang."""
        cutoff = time.time() - seconds
        return [(r[0], r[1]) for r in self._db().execute(
            "SELECT owner, id FROM jobs WHERE state='leased' AND leased_at<?", (cutoff,)).fetchall()]

    @_classified
    def depth(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    def job_state(self, job_id: str) -> str | None:
        row = self._db().execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._shared.close()


QUEUES.register("sqlite", lambda settings: SqliteQueue(Path(settings.state_dir) / "queue.db"))
