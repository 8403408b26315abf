"""The daemon purges gallery subjects past their retention date and leaves a tombstone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from facewarden.config.schema import Settings
from facewarden.daemon.app import Daemon
from facewarden.storage.audit import AuditLog
from facewarden.storage.gallery import open_gallery
from tests.daemon_harness import wait_for


def test_daemon_purges_expired_subjects_with_an_audit_tombstone(tmp_path: Path, models_dir: Path):
    state = tmp_path / "state"
    gallery = open_gallery(state)
    vec = np.linspace(-1, 1, 128, dtype=np.float32)
    gallery.add_embedding("expired", "dlib-resnet-v1", vec, photo_sha256="a" * 64, name="Gone Person",
                          retain_until=time.time() - 60)
    gallery.add_embedding("current", "dlib-resnet-v1", -vec, photo_sha256="b" * 64,
                          retain_until=time.time() + 86400)
    gallery.close()
    settings = Settings.model_validate({"state_dir": str(state), "models_dir": str(models_dir),
                                        "log": {"format": "json"}})
    daemon = Daemon(settings)
    daemon.workers_override = 0
    daemon.start()
    audit = AuditLog(state)
    try:
        wait_for(lambda: audit.count() >= 1, 30, "a purge tombstone")
    finally:
        daemon.stop()
    (record,) = [json.loads(r[2]) for r in audit.iter_records()]
    assert record["kind"] == "subject.purged" and record["subject"] == "expired"
    assert record["reason"]["code"] == "retention.expired"
    assert "Gone Person" not in json.dumps(record)  # a tombstone names no one
    remaining = [s["id"] for s in open_gallery(state).subjects()]
    assert remaining == ["current"]
