"""The Queue seam. Delivery is at-least-once: a job leased by a worker that dies comes
back. Results are idempotent (see the audit index), so the effect is exactly-once."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from facewarden.daemon.jobs import Job
from facewarden.registry import Registry


@dataclass(slots=True)
class Lease:
    job: Job
    #: Backend-specific handle (row id, delivery tag...).
    token: object
    #: How many times this job has been handed to a worker, this delivery included.
    delivery: int


class Queue(abc.ABC):
    """Every capability the daemon uses, declared here (dramatiq-style). The core five
    are abstract; the rest have defaults that are right for a broker that redelivers on
    its own (RabbitMQ), and the embedded queue overrides them."""

    @abc.abstractmethod
    def put(self, job: Job, *, dedup: str | None = None) -> bool:
        """Stores the job durably before returning. With ``dedup``, a job whose dedup
        string was already accepted is dropped and False returned."""

    @abc.abstractmethod
    def get(self, worker: str, timeout: float) -> Lease | None:
        """Leases the next due job to ``worker``, waiting up to ``timeout`` seconds."""

    @abc.abstractmethod
    def ack(self, lease: Lease) -> None:
        """The job is finished (result and audit record are durable): forget it."""

    @abc.abstractmethod
    def retry(self, lease: Lease, *, reason: dict[str, str], delay: float) -> None:
        """Gives the job back, due again after ``delay`` seconds."""

    @abc.abstractmethod
    def depth(self) -> int: ...

    def close(self) -> None:  # noqa: B027 - a queue without resources has nothing to close
        """Releases connections and files."""

    # -- capabilities with defaults ----------------------------------------------------
    def dead_letter_depth(self) -> int | None:
        """Jobs in the dead-letter queue; None when the backend has none."""
        return None

    def job_state(self, job_id: str) -> str | None:
        """``queued`` or ``leased`` while the job is in this queue; None when unknown."""
        return None

    def release_owner(self, owner: str, *, reason: dict[str, str], delay: float = 0.0) -> int:
        """Gives back the jobs leased by a worker that died; returns how many. Brokers
        redeliver by themselves when the worker's connection drops: nothing to do."""
        return 0

    def release_all(self, *, reason: dict[str, str]) -> int:
        """At daemon start: gives back every job leased before a restart."""
        return 0

    def leases_older_than(self, seconds: float) -> list[tuple[str, str]]:
        """(owner, job id) of leases held longer than ``seconds`` (hung workers)."""
        return []

    def reachable(self) -> bool:
        """Whether the backend answers now (for /readyz)."""
        return True


#: Queue backends by ``queue.backend``; each backend file registers a factory that takes
#: the Settings and returns a Queue.
QUEUES: Registry[Callable[[Any], Queue]] = Registry("queue", "facewarden.daemon.queues", ("sqlite", "rabbitmq"))
