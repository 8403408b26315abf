"""The daemon purges gallery subjects past their retention date and leaves a tombstone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fixtures_pg
import numpy as np
import pytest

from facewarden.config.schema import Settings
from facewarden.daemon.app import Daemon
from facewarden.storage.audit import AuditLog
from facewarden.storage.gallery import generate_key_file, open_gallery
from tests.daemon_harness import wait_for

pg_gallery_urls = fixtures_pg.pg_gallery_urls


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


@pytest.mark.postgres
def test_two_daemons_on_one_postgres_gallery_purge_each_subject_once(tmp_path: Path, models_dir: Path,
                                                                     pg_gallery_urls) -> None:
    """Two hosts (own state dirs and audit logs) share the gallery: each expired subject is
    erased once, and exactly one of the two audit logs holds its tombstone."""
    key_file = tmp_path / "gallery.key"
    generate_key_file(key_file)
    gallery_cfg = {"url": pg_gallery_urls.url, "keys_url": pg_gallery_urls.keys_url, "key_file": str(key_file)}
    seed = open_gallery(None, key_file, url=pg_gallery_urls.url, keys_url=pg_gallery_urls.keys_url)
    rng = np.random.default_rng(3)
    expired = [f"gone{i:02d}" for i in range(12)]
    for i, subject in enumerate(expired):
        seed.add_embedding(subject, "dlib-resnet-v1", rng.standard_normal(128).astype(np.float32),
                           photo_sha256=f"{i:064x}", name="Gone Person", retain_until=time.time() - 60)
    seed.add_embedding("current", "dlib-resnet-v1", rng.standard_normal(128).astype(np.float32),
                       photo_sha256="c" * 64, retain_until=time.time() + 86400)
    daemons, audits = [], []
    for host in ("a", "b"):
        settings = Settings.model_validate({"state_dir": str(tmp_path / host), "models_dir": str(models_dir),
                                            "log": {"format": "json"}, "gallery": gallery_cfg})
        d = Daemon(settings)
        d.workers_override = 0
        daemons.append(d)
        audits.append(AuditLog(tmp_path / host))
    for d in daemons:
        d.start()
    try:
        wait_for(lambda: sum(a.count() for a in audits) >= len(expired), 30, "purge tombstones")
        time.sleep(0.5)  # a double purge would show up as extra tombstones by now
    finally:
        for d in daemons:
            d.stop()
    records = [json.loads(r[2]) for a in audits for r in a.iter_records()]
    assert sorted(r["subject"] for r in records) == expired  # each once, across both hosts
    assert all(r["kind"] == "subject.purged" and "Gone Person" not in json.dumps(r) for r in records)
    assert [s["id"] for s in seed.subjects()] == ["current"]
    seed.close()
