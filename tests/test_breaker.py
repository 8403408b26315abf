"""Outage handling in the worker, in-process: breaker states, the retry budget, attempts.

The queue is the real SQLite queue. The pipeline is a stand-in that fails the way the real
one does when a store is down (it raises the store's error): what is tested here is the
worker's decision, not image processing (the daemon-level tests are in tests/faults).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from facewarden.config.schema import Settings
from facewarden.daemon.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Breakers
from facewarden.daemon.jobs import Job
from facewarden.daemon.pipeline import Outcome
from facewarden.daemon.queues.sqlite import SqliteQueue
from facewarden.daemon.worker import HINT_OUTAGE_RETRIES, handle_lease
from facewarden.errors import ProcessingFailed, StoreUnavailable


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_probes_half_open_and_closes() -> None:
    clock = FakeClock()
    b = Breaker("out", threshold=3, probe_interval=1.0, clock=clock)
    assert not b.failure("store.full") and not b.failure("store.full")
    assert b.state == CLOSED
    assert b.failure("store.full") and b.state == OPEN
    assert not b.probe_due()
    clock.t += 1.0
    assert b.probe_due()
    b.half_open()
    assert b.state == HALF_OPEN
    assert not b.failure("store.full"), "a failed probe re-opens without a second 'opened'"
    assert b.state == OPEN and not b.probe_due()
    clock.t += 1.0
    b.half_open()
    assert b.success() and b.state == CLOSED and b.failures == 0


def test_a_success_between_failures_keeps_the_breaker_closed() -> None:
    b = Breaker("out", threshold=2)
    b.failure()
    b.success()
    b.failure()
    assert b.state == CLOSED


class Store:
    """A store seam stand-in whose probe fails while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.probes = 0

    def probe(self) -> None:
        self.probes += 1
        if self.down:
            raise StoreUnavailable("store.unavailable", "refused", store="out")


def test_workers_take_no_job_while_a_store_is_down() -> None:
    store = Store()
    breakers = Breakers({"out": store}, threshold=1, probe_interval=0.05)
    breakers.failure("out", StoreUnavailable("store.unavailable", "refused", store="out"))
    assert breakers.blocked() and breakers.open_stores() == ["out"]
    time.sleep(0.06)
    assert breakers.blocked() and store.probes == 1
    store.down = False
    time.sleep(0.06)
    assert not breakers.blocked() and store.probes == 2


class FailingPipeline:
    def __init__(self, err: Exception):
        self.err = err
        self.quarantined: list[tuple[Job, Exception]] = []

    def process(self, job: Job) -> Outcome:
        raise self.err

    def quarantine_after_failure(self, job: Job, err: Exception) -> Outcome:
        self.quarantined.append((job, err))
        return Outcome("quarantined", {"outcome": "quarantined", "reason": err.as_dict()})


def _settings(tmp_path: Path, **workers: object) -> Settings:
    return Settings.model_validate({"state_dir": str(tmp_path / "state"),
                                    "workers": {"max_attempts": 3, "backoff_base": 0.01, **workers}})


def _drain(queue: SqliteQueue, pipeline, settings: Settings, rounds: int, breakers=None) -> list:
    outcomes = []
    for _ in range(rounds):
        lease = queue.get("w", timeout=3)
        assert lease is not None
        outcomes.append(handle_lease(pipeline, queue, lease, settings, breakers=breakers))
        if outcomes[-1] is not None:
            break
    return outcomes


def test_outages_do_not_use_up_attempts(tmp_path: Path) -> None:
    settings = _settings(tmp_path, retry_budget=3600)
    queue = SqliteQueue(tmp_path / "q.db")
    queue.put(Job(handler="anonymize", params={}, store="in", key="a.jpg", target="out"))
    pipeline = FailingPipeline(StoreUnavailable("store.unavailable", "connection refused", store="out"))
    outcomes = _drain(queue, pipeline, settings, rounds=6)
    assert outcomes == [None] * 6, "six outage failures, still no quarantine (max_attempts is 3)"
    lease = queue.get("w", timeout=3)
    assert lease.delivery == 7 and lease.job.hints[HINT_OUTAGE_RETRIES] == 6
    assert not pipeline.quarantined


def test_retry_budget_ends_in_quarantine_with_the_outage_code(tmp_path: Path) -> None:
    settings = _settings(tmp_path, retry_budget=0.3)
    queue = SqliteQueue(tmp_path / "q.db")
    queue.put(Job(handler="anonymize", params={}, store="in", key="a.jpg", target="out"))
    pipeline = FailingPipeline(StoreUnavailable("store.full", "no space left", store="out"))
    deadline = time.monotonic() + 20
    while not pipeline.quarantined and time.monotonic() < deadline:
        lease = queue.get("w", timeout=3)
        handle_lease(pipeline, queue, lease, settings)
    (_job, err), = pipeline.quarantined
    assert err.code == "store.full" and "re-driven" in err.message
    assert queue.depth() == 0


def test_processing_failures_still_quarantine_after_max_attempts(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    queue = SqliteQueue(tmp_path / "q.db")
    queue.put(Job(handler="anonymize", params={}, store="in", key="a.jpg", target="out"))
    pipeline = FailingPipeline(ProcessingFailed("handler.crashed", "boom"))
    outcomes = _drain(queue, pipeline, settings, rounds=3)
    assert outcomes[:2] == [None, None] and outcomes[2].outcome == "quarantined"
    assert pipeline.quarantined[0][1].code == "handler.crashed"


def test_outage_failures_open_the_breaker(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    queue = SqliteQueue(tmp_path / "q.db")
    for i in range(3):
        queue.put(Job(handler="anonymize", params={}, store="in", key=f"{i}.jpg", target="out"))
    store = Store()
    breakers = Breakers({"out": store}, threshold=3)
    pipeline = FailingPipeline(StoreUnavailable("store.unavailable", "refused", store="out"))
    for _ in range(3):
        handle_lease(pipeline, queue, queue.get("w", timeout=3), settings, breakers=breakers)
    assert breakers.open_stores() == ["out"]
    assert queue.depth() == 3, "every job is still queued"


@pytest.mark.parametrize("code", ["store.error", "store.write_failed", "store.unavailable", "store.full"])
def test_outage_codes_are_redriven(code: str) -> None:
    from facewarden.errors import INFRASTRUCTURE_CODES

    assert code in INFRASTRUCTURE_CODES
    assert "input.rejected" not in INFRASTRUCTURE_CODES and "store.refused" not in INFRASTRUCTURE_CODES
