"""The Queue seam. Delivery is at-least-once: a job leased by a worker that dies comes
back. Results are idempotent (see the audit index), so the effect is exactly-once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from facewarden.daemon.jobs import Job


@dataclass(slots=True)
class Lease:
    job: Job
    #: Backend-specific handle (row id, delivery tag...).
    token: object
    #: How many times this job has been handed to a worker, this delivery included.
    delivery: int


class Queue(Protocol):
    def put(self, job: Job, *, dedup: str | None = None) -> bool:
        """Stores the job durably before returning. With ``dedup``, a job whose dedup
        string was already accepted is dropped and False returned."""
        ...

    def get(self, worker: str, timeout: float) -> Lease | None:
        """Leases the next due job to ``worker``, waiting up to ``timeout`` seconds."""
        ...

    def ack(self, lease: Lease) -> None:
        """The job is finished (result and audit record are durable): forget it."""
        ...

    def retry(self, lease: Lease, *, reason: dict[str, str], delay: float) -> None:
        """Gives the job back, due again after ``delay`` seconds."""
        ...

    def depth(self) -> int: ...

    def close(self) -> None: ...
