"""Re-drive of jobs quarantined for an outage (incl. records of earlier versions).

Real pipeline failure path, real stores (folders), real audit log and SQLite queue; the
job re-driven from quarantine is checked for where its bytes come from and where its
result will go, without running a model (tests/faults runs the whole daemon).
"""

from __future__ import annotations

from pathlib import Path

from facewarden.config.schema import Settings
from facewarden.daemon.jobs import Event
from facewarden.daemon.pipeline import Pipeline, output_key
from facewarden.daemon.queues.sqlite import SqliteQueue
from facewarden.daemon.redrive import pending, redrive
from facewarden.daemon.routing import Router
from facewarden.errors import InputRejected, StoreError
from facewarden.storage.stores import open_stores


def _world(tmp_path: Path, originals: str):
    for d in ("in", "out"):
        (tmp_path / d).mkdir()
    settings = Settings.model_validate({
        "state_dir": str(tmp_path / "state"),
        "stores": {"incoming": {"type": "local", "root": str(tmp_path / "in")},
                   "outgoing": {"type": "local", "root": str(tmp_path / "out")}},
        "sources": [{"name": "incoming", "store": "incoming"}],
        "routes": [{"source": "incoming", "handler": "anonymize", "target": "outgoing",
                    "prefix": "anon", "originals": originals}],
    })
    stores = open_stores(settings.all_stores())
    return settings, stores, Pipeline(settings, stores), SqliteQueue(tmp_path / "q.db")


def _quarantine(settings, pipeline, tmp_path: Path, key: str, err) -> None:
    (tmp_path / "in" / key).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "in" / key).write_bytes(b"\xff\xd8 photo bytes " + key.encode())
    job = Router(settings).route(Event(store="incoming", key=key, source="incoming"))
    pipeline.quarantine_after_failure(job, err)


def test_earlier_version_write_failures_are_redriven_once_from_quarantine(tmp_path: Path) -> None:
    settings, stores, pipeline, queue = _world(tmp_path, "delete")
    _quarantine(settings, pipeline, tmp_path, "sub/a.jpg",
                StoreError("store.write_failed", "cannot write: No space left on device"))
    _quarantine(settings, pipeline, tmp_path, "b.jpg", InputRejected("input.undecodable", "not an image"))
    assert not (tmp_path / "in" / "sub" / "a.jpg").exists(), "the old version moved it to quarantine"
    assert [r["input"]["key"] for r in pending(pipeline.audit)] == ["sub/a.jpg"]

    down = {"outgoing"}
    assert redrive(settings, pipeline.audit, queue, stores, is_up=lambda s: s not in down) == 0
    down.clear()
    assert redrive(settings, pipeline.audit, queue, stores) == 1
    assert redrive(settings, pipeline.audit, queue, stores) == 0, "never re-driven twice"
    assert list(pending(pipeline.audit)) == []

    lease = queue.get("w", timeout=2)
    job = lease.job
    assert (job.store, job.key) == ("quarantine", "incoming/sub/a.jpg")
    assert stores[job.store].get(job.key).endswith(b"sub/a.jpg")
    assert output_key(job, ".jpg", "") == "anon/sub/a.jpg", "the result lands where it always would have"
    assert job.originals == "delete" and job.hints["redrive_of"] == 1
    assert queue.get("w", timeout=0.2) is None


def test_input_still_in_place_is_redriven_from_there(tmp_path: Path) -> None:
    settings, stores, pipeline, queue = _world(tmp_path, "keep")
    _quarantine(settings, pipeline, tmp_path, "c.jpg",
                StoreError("store.error", "S3 GET failed (EndpointConnectionError)"))
    assert redrive(settings, pipeline.audit, queue, stores) == 1
    job = queue.get("w", timeout=2).job
    assert (job.store, job.key, job.target, job.target_prefix) == ("incoming", "c.jpg", "outgoing", "anon")
