"""The pipeline's every branch, in milliseconds: a stub handler and an in-memory store.

The stub handler stands in for model-backed handlers only to make these tests fast (the
real handlers are exercised end to end in test_daemon, test_cli, test_enroll...). The
store is real code (a Store subclass), only in memory; the audit log is the real SQLite
one. Each test asserts what a user would see: bytes in the target store, records in the
log, originals untouched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from facewarden.config import settings_from_flags
from facewarden.daemon.jobs import Job
from facewarden.daemon.pipeline import AUDIT_SUFFIX, Pipeline
from facewarden.errors import ProcessingFailed
from facewarden.handlers.base import CommittingHandler
from facewarden.storage.audit import AuditLog, record_hash
from facewarden.storage.base import Store
from facewarden.storage.local import LocalStore
from tests.stubs import COMMITTER, OTHER, PHOTO, STUB, MemoryStore, reset_stubs


@pytest.fixture(autouse=True)
def _reset() -> None:
    reset_stubs()
    structlog.reset_defaults()  # another test may have set a level that hides info events


class Env:
    """Settings, in-memory stores, the real audit log and a pipeline over them."""

    def __init__(self, tmp: Path):
        self.settings = settings_from_flags(None, state=tmp / "state", models_dir=tmp / "models", environ={})
        self.stores: dict[str, Store] = {n: MemoryStore(n) for n in ("in", "out", "out2", "quarantine", "processed")}
        self.audit = AuditLog(tmp / "state")
        self.pipeline = Pipeline(self.settings, self.stores, audit=AuditLog(tmp / "state"), services={})

    def job(self, key: str = "a/p.png", **kw: Any) -> Job:
        base = {"handler": "stub", "params": {}, "store": "in", "key": key, "target": "out",
                "hints": {"source": "drop"}}
        return Job(**{**base, **kw})

    def verify(self) -> None:
        def read(location: str, _record: dict) -> bytes | None:
            name, _, key = location.partition(":")
            return self.stores[name].get(key)

        report = self.audit.verify(read)
        assert report.ok, report.problems


@pytest.fixture
def env(tmp: Path) -> Env:
    return Env(tmp)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the happy path ------------------------------------------------------------------------
def test_ok_writes_the_result_then_its_record_and_logs_source_key_and_outputs(env):
    env.stores["in"].put("a/p.png", PHOTO)
    with capture_logs() as logs:
        outcome = env.pipeline.process(env.job())
    assert outcome.outcome == "ok" and outcome.outputs == ["a/p.jpg"]
    out = env.stores["out"].get("a/p.jpg")
    record = outcome.record
    assert record["outputs"][0]["sha256"] == _sha(out) and record["input"]["sha256"] == _sha(PHOTO)
    copy = json.loads(env.stores["out"].get("a/p.jpg" + AUDIT_SUFFIX))
    assert copy["hash"] == record["hash"] == record_hash(copy)
    assert env.stores["in"].get("a/p.png") == PHOTO  # originals=keep
    (event,) = [e for e in logs if e["event"] == "job.ok"]
    assert event["source"] == "drop" and event["key"] == "a/p.png" and event["outputs"] == ["a/p.jpg"]
    assert not any(isinstance(v, bytes) for e in logs for v in e.values())
    env.verify()


def test_redelivered_finished_job_adds_no_record(env):
    env.stores["in"].put("p.png", PHOTO)
    job = env.job("p.png")
    first = env.pipeline.process(job)
    again = env.pipeline.process(job)
    assert again.redelivered and again.outcome == "ok" and again.record["seq"] == first.record["seq"]
    assert env.audit.count() == 1 and STUB.runs == 1


def test_committing_handler_commits_and_plain_handler_does_not(env):
    env.stores["in"].put("p.png", PHOTO)
    assert env.pipeline.process(env.job("p.png", handler="stub-commit")).outcome == "ok"
    assert COMMITTER.commits == ["p.png"]
    assert not isinstance(STUB, CommittingHandler)


def test_a_committing_handler_is_never_a_mere_copy(env):
    env.stores["in"].put("p.png", PHOTO)
    env.stores["in"].put("q.png", PHOTO)
    env.pipeline.process(env.job("p.png", handler="stub-commit"))
    second = env.pipeline.process(env.job("q.png", handler="stub-commit"))
    assert second.outcome == "ok" and "copy_of" not in second.record
    assert COMMITTER.commits == ["p.png", "q.png"]


def test_several_outputs_and_the_record_beside_the_first(env):
    env.stores["in"].put("p.png", PHOTO)
    outcome = env.pipeline.process(env.job("p.png", params={"sheet": True}))
    assert outcome.outputs == ["p.jpg", "p-sheet.jpg"]
    assert env.stores["out"].exists("p.jpg" + AUDIT_SUFFIX)


# -- inputs that finish early --------------------------------------------------------------
def test_missing_input_is_rejected_with_a_reason(env):
    with capture_logs() as logs:
        outcome = env.pipeline.process(env.job("gone.png"))
    assert outcome.outcome == "rejected" and outcome.record["reason"]["code"] == "input.missing"
    assert [e["key"] for e in logs if e["event"] == "job.rejected"] == ["gone.png"]


def test_too_large_input_is_moved_to_quarantine_unread(env):
    small = env.settings.model_copy(update={"limits": env.settings.limits.model_copy(update={"max_bytes": 100})})
    env.stores["in"].put("big.png", PHOTO)
    pipeline = Pipeline(small, env.stores, audit=env.audit, services={})
    outcome = pipeline.process(env.job("big.png", originals="move"))
    assert outcome.record["reason"]["code"] == "input.too_large"
    assert env.stores["quarantine"].get("in/big.png") == PHOTO and not env.stores["in"].exists("big.png")
    assert not env.stores["out"].objects


@pytest.mark.parametrize(("job_kw", "code"), [({"handler": "no-such"}, "handler.unknown"),
                                              ({"params": {"bogus": 1}}, "params.invalid")])
def test_unknown_handler_or_bad_params_quarantine_the_input(env, job_kw, code):
    env.stores["in"].put("p.png", PHOTO)
    outcome = env.pipeline.process(env.job("p.png", **job_kw))
    assert outcome.outcome == "rejected" and outcome.record["reason"]["code"] == code
    assert env.stores["quarantine"].get("in/p.png") == PHOTO and not env.stores["out"].objects


def test_undecodable_and_handler_rejected_inputs_fail_closed(env):
    env.stores["in"].put("junk.png", b"not an image")
    assert env.pipeline.process(env.job("junk.png")).record["reason"]["code"] == "input.not_an_image"
    env.stores["in"].put("p.png", PHOTO)
    STUB.fail_next = True
    outcome = env.pipeline.process(env.job("p.png", originals="delete"))
    assert outcome.record["reason"]["code"] == "face.none"
    assert not env.stores["out"].objects
    assert env.stores["quarantine"].get("in/p.png") == PHOTO and not env.stores["in"].exists("p.png")
    env.verify()


def test_retryable_failure_raises_then_quarantines_after_the_last_attempt(env):
    env.stores["in"].put("p.png", PHOTO)
    STUB.crash_next = True
    job = env.job("p.png")
    with pytest.raises(ProcessingFailed) as info:
        env.pipeline.process(job)
    assert info.value.code == "handler.crashed" and not env.stores["out"].objects
    outcome = env.pipeline.quarantine_after_failure(job, info.value)
    assert outcome.outcome == "quarantined" and env.stores["quarantine"].get("in/p.png") == PHOTO


# -- dedup: "this target already has this result" ------------------------------------------
def test_same_bytes_same_key_same_target_is_a_duplicate_and_runs_nothing(env):
    env.stores["in"].put("p.png", PHOTO)
    first = env.pipeline.process(env.job("p.png"))
    with capture_logs() as logs:
        second = env.pipeline.process(env.job("p.png", hints={"source": "other-source"}))
    assert second.outcome == "duplicate" and STUB.runs == 1
    assert second.record["duplicate_of"] == {"seq": first.record["seq"], "hash": first.record["hash"]}
    assert second.outputs == ["p.jpg"]
    (event,) = [e for e in logs if e["event"] == "job.duplicate"]
    assert event["source"] == "other-source" and event["key"] == "p.png"


def test_same_bytes_under_another_key_get_their_own_result_as_a_copy(env):
    """Issue 9: p22.jpg's consumer never saw a result (it was reported as a duplicate)."""
    env.stores["in"].put("p.png", PHOTO)
    env.stores["in"].put("p22.png", PHOTO)
    first = env.pipeline.process(env.job("p.png"))
    second = env.pipeline.process(env.job("p22.png"))
    assert second.outcome == "ok" and STUB.runs == 1
    assert second.record["copy_of"] == {"seq": first.record["seq"], "hash": first.record["hash"]}
    assert env.stores["out"].get("p22.jpg") == env.stores["out"].get("p.jpg")
    assert json.loads(env.stores["out"].get("p22.jpg" + AUDIT_SUFFIX))["hash"] == second.record["hash"]
    env.verify()


def test_a_job_for_another_route_writes_into_its_own_target(env):
    """Issue 9: a duplicate of a job finished for another route pointed at the other target."""
    env.stores["in"].put("p.png", PHOTO)
    env.pipeline.process(env.job("p.png", target="out"))
    second = env.pipeline.process(env.job("p.png", target="out2", target_prefix="faces"))
    assert second.outcome == "ok" and second.outputs == ["faces/p.jpg"]
    assert env.stores["out2"].get("faces/p.jpg") == env.stores["out"].get("p.jpg")
    assert all(o["store"] == "out2" for o in second.record["outputs"]) and STUB.runs == 1


def test_a_result_missing_from_its_target_is_written_again(env):
    env.stores["in"].put("p.png", PHOTO)
    env.stores["in"].put("q.png", PHOTO)
    env.pipeline.process(env.job("p.png"))
    env.pipeline.process(env.job("q.png"))  # a copy
    env.stores["out"].delete("p.jpg")
    again = env.pipeline.process(env.job("p.png"))
    assert again.outcome == "ok" and "copy_of" in again.record and STUB.runs == 1  # copied from q.jpg
    env.stores["out"].objects.clear()
    rerun = env.pipeline.process(env.job("p.png"))
    assert rerun.outcome == "ok" and "copy_of" not in rerun.record and STUB.runs == 2  # nothing to copy
    assert env.stores["out"].exists("p.jpg")


def test_a_tampered_result_is_not_taken_for_the_result(env):
    env.stores["in"].put("p.png", PHOTO)
    env.pipeline.process(env.job("p.png"))
    env.stores["out"].put("p.jpg", b"someone else's bytes")
    outcome = env.pipeline.process(env.job("p.png", replace="always"))
    assert outcome.outcome == "ok" and STUB.runs == 2
    assert env.stores["out"].get("p.jpg") != b"someone else's bytes"


def test_force_processes_again(env):
    env.stores["in"].put("p.png", PHOTO)
    env.pipeline.process(env.job("p.png"))
    outcome = env.pipeline.process(env.job("p.png", force=True))
    assert outcome.outcome == "ok" and STUB.runs == 2 and "copy_of" not in outcome.record


def test_failures_are_not_remembered_as_seen(env):
    """Issue 16 item 3: the same bytes dropped again after a rejection are processed again."""
    env.stores["in"].put("p.png", PHOTO)
    STUB.fail_next = True
    assert env.pipeline.process(env.job("p.png")).outcome == "rejected"
    env.stores["in"].put("p.png", PHOTO)
    assert env.pipeline.process(env.job("p.png")).outcome == "ok"
    assert STUB.runs == 2


def test_other_host_finished_this_very_job(env, tmp: Path):
    """Worker hosts share the target store, not the audit index: the copy beside the
    result tells a redelivered job that another host finished it."""
    env.stores["in"].put("p.jpg", PHOTO)
    job = env.job("p.jpg")
    env.pipeline.process(job)
    other_host = Pipeline(env.settings, env.stores, audit=AuditLog(tmp / "other-state"), services={})
    again = other_host.process(Job.from_json(job.to_json()))
    assert again.redelivered and other_host.audit.count() == 0 and STUB.runs == 1


# -- outputs never replace inputs, nor anything else silently -------------------------------
def test_an_output_that_would_replace_its_input_is_refused(env):
    env.stores["in"].put("y.jpg", PHOTO)
    outcome = env.pipeline.process(env.job("y.jpg", target="in"))
    assert outcome.outcome == "rejected" and outcome.record["reason"]["code"] == "output.is_input"
    assert env.stores["in"].get("y.jpg") == PHOTO


def test_local_stores_with_one_root_are_recognised_as_one_place(tmp: Path):
    a, b = LocalStore("a", tmp / "same"), LocalStore("b", tmp / "same")
    assert a.same_location("y.jpg", b, "y.jpg") and not a.same_location("y.jpg", b, "z.jpg")


def test_an_existing_output_with_other_content_is_never_silently_replaced(env):
    env.stores["in"].put("p.png", PHOTO)
    env.stores["out"].put("p.jpg", b"a file someone put there")
    refused = env.pipeline.process(env.job("p.png"))
    assert refused.outcome == "rejected" and refused.record["reason"]["code"] == "output.exists"
    assert env.stores["out"].get("p.jpg") == b"a file someone put there"
    assert env.pipeline.process(env.job("p.png", replace="never")).outcome == "rejected"
    assert env.pipeline.process(env.job("p.png", replace="always")).outcome == "ok"
    assert env.stores["out"].get("p.jpg") != b"a file someone put there"


def test_a_new_version_of_an_input_replaces_its_own_earlier_result(env):
    env.stores["in"].put("p.png", PHOTO)
    env.pipeline.process(env.job("p.png"))
    old = env.stores["out"].get("p.jpg")
    env.stores["in"].put("p.png", OTHER)
    assert env.pipeline.process(env.job("p.png", replace="never")).record["reason"]["code"] == "output.exists"
    assert env.pipeline.process(env.job("p.png")).outcome == "ok"  # the daemon's default: replace="own"
    assert env.stores["out"].get("p.jpg") != old
    env.stores["in"].put("q.png", PHOTO)  # another input may not take p's place
    assert env.pipeline.process(env.job("q.png")).outcome == "ok"
    env.stores["in"].put("r/p.png", PHOTO)  # nor may it take the place of another input's result
    env.stores["out"].put("r/p.jpg", env.stores["out"].get("p.jpg"))  # ...p's bytes, p's result
    assert env.pipeline.process(env.job("r/p.png", params={"level": 2})).record["reason"]["code"] == \
        "output.exists"


def test_a_retry_after_a_crash_between_write_and_record_converges(env):
    """A handler whose output differs per run (receipts with a time) wrote its output,
    then the worker died before the record: the retry replaces its own orphan."""
    env.stores["in"].put("p.png", PHOTO)
    env.stores["out"].put("p.jpg", b"written by attempt 1, which then died")
    job = env.job("p.png", params={"stamp": True}, replace="never")
    job.attempts = 1
    outcome = env.pipeline.process(job)
    assert outcome.outcome == "ok" and env.audit.count() == 1


# -- originals -----------------------------------------------------------------------------
def test_originals_are_moved_or_deleted_only_after_success(env):
    env.stores["in"].put("m.png", PHOTO)
    env.stores["in"].put("d.png", OTHER)
    env.pipeline.process(env.job("m.png", originals="move", processed_store="processed", processed_prefix="done"))
    env.pipeline.process(env.job("d.png", originals="delete"))
    assert env.stores["processed"].get("done/m.png") == PHOTO
    assert not env.stores["in"].objects


def test_local_move_is_a_rename(tmp: Path):
    src, dest = LocalStore("src", tmp / "src"), LocalStore("dest", tmp / "dest")
    src.put("a/x.jpg", b"x")
    inode = src.path_of("a/x.jpg").stat().st_ino
    src.move_to("a/x.jpg", dest, "b/x.jpg")
    assert dest.path_of("b/x.jpg").stat().st_ino == inode and not src.exists("a/x.jpg")


# -- log events ----------------------------------------------------------------------------
def test_job_queued_names_the_source_and_key(tmp: Path):
    from facewarden.daemon.app import Daemon
    from facewarden.daemon.jobs import Event

    settings = settings_from_flags(None, watch=tmp / "in", out=tmp / "out", state=tmp / "state",
                                   models_dir=tmp / "models", environ={})
    from facewarden.daemon.queues.factory import open_queue
    from facewarden.daemon.routing import Router

    daemon = Daemon(settings)
    daemon.router, daemon.queue = Router(settings), open_queue(settings)  # what start() sets up first
    try:
        with capture_logs() as logs:
            assert daemon.emit(Event(store="incoming", key="sub/p.jpg", source="incoming", version="1"))
    finally:
        daemon.queue.close()
    (event,) = [e for e in logs if e["event"] == "job.queued"]
    assert event["source"] == "incoming" and event["key"] == "sub/p.jpg" and event["store"] == "incoming"
