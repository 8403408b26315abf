"""The daemon end to end on the embedded default: real folders, real models, real processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.daemon_harness import DATA, DaemonProcess, audit_rows, wait_for, write_config

PASCAL = sorted((DATA / "faces-pascal").glob("*.jpg"))
pytestmark = pytest.mark.slow


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("incoming", "outgoing", "state")}
    for p in d.values():
        p.mkdir()
    d["config"] = write_config(tmp_path / "fw.toml", d["incoming"], d["outgoing"], d["state"])
    d["log"] = tmp_path / "daemon.log"
    return d


def test_picks_up_files_before_and_after_start_including_new_subfolders(dirs):
    shutil.copy(PASCAL[0], dirs["incoming"] / "before.jpg")
    daemon = DaemonProcess(dirs["config"], dirs["log"])
    try:
        daemon.wait_event("worker.ready")
        (dirs["incoming"] / "a" / "b").mkdir(parents=True)
        shutil.copy(PASCAL[1], dirs["incoming"] / "a" / "b" / "after one.jpg")
        shutil.copy(PASCAL[2], dirs["incoming"] / "top-after.jpg")
        expected = ["before.jpg", "a/b/after one.jpg", "top-after.jpg"]
        wait_for(lambda: all((dirs["outgoing"] / f"{k}.audit.json").exists() for k in expected), 60,
                 "three results with audit records")
        for key in expected:
            out = dirs["outgoing"] / key
            record = json.loads((dirs["outgoing"] / f"{key}.audit.json").read_text())
            assert record["outcome"] == "ok"
            assert record["input"]["key"] == key
            assert record["input"]["sha256"] == sha(dirs["incoming"] / key)
            assert record["outputs"][0]["sha256"] == sha(out)
            assert record["facts"]["faces"] >= 1
            assert sha(out) != sha(dirs["incoming"] / key)
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    verify = subprocess.run([sys.executable, "-m", "facewarden", "audit", "verify", "--config",
                             str(dirs["config"])], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "3 records, 3 copies" in verify.stdout
    # An auditor with only the state dir (no config): copies are found from the records' file URIs.
    copy = dirs["outgoing"] / "a/b/after one.jpg.audit.json"
    copy.write_text(copy.read_text().replace('"outcome": "ok"', '"outcome": "rejected"'))
    verify = subprocess.run([sys.executable, "-m", "facewarden", "audit", "verify", "--state", str(dirs["state"])],
                            capture_output=True, text=True)
    assert verify.returncode == 1
    assert "3 copies beside results checked" in verify.stdout
    assert "differs from the log (altered)" in verify.stdout


def test_identical_bytes_under_a_second_name_get_their_own_result_as_a_copy(dirs):
    """Issue 9: a consumer waiting for copy-of-one.jpg's result used to wait forever (the
    job was a "duplicate" pointing at one.jpg). Now it gets its own result, a copy of the
    first, recorded as such."""
    daemon = DaemonProcess(dirs["config"], dirs["log"])
    try:
        daemon.wait_event("worker.ready")
        shutil.copy(PASCAL[0], dirs["incoming"] / "one.jpg")
        wait_for(lambda: (dirs["outgoing"] / "one.jpg.audit.json").exists(), 60, "first result")
        shutil.copy(PASCAL[0], dirs["incoming"] / "copy-of-one.jpg")
        wait_for(lambda: len(audit_rows(dirs["state"])) >= 2, 60, "second record")
    finally:
        daemon.close()
    first, second = audit_rows(dirs["state"])
    assert first["outcome"] == "ok" and "copy_of" not in first
    assert second["outcome"] == "ok"
    assert second["copy_of"] == {"seq": first["seq"], "hash": first["hash"]}
    assert second["idempotency_key"] == first["idempotency_key"]
    copy = dirs["outgoing"] / "copy-of-one.jpg"
    assert copy.read_bytes() == (dirs["outgoing"] / "one.jpg").read_bytes()
    assert second["outputs"][0]["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert json.loads((dirs["outgoing"] / "copy-of-one.jpg.audit.json").read_text())["hash"] == second["hash"]


def test_kill_9_mid_batch_then_restart_processes_every_input_exactly_once(dirs):
    names = []
    for i in range(12):
        src = PASCAL[i % len(PASCAL)]
        # Distinct bytes per copy, so every file is its own input, not a duplicate.
        name = f"batch-{i:02d}.jpg"
        data = src.read_bytes() + f"pad{i}".encode()
        (dirs["incoming"] / name).write_bytes(data)
        names.append(name)
    daemon = DaemonProcess(dirs["config"], dirs["log"])
    try:
        wait_for(lambda: len(audit_rows(dirs["state"])) >= 3, 90, "a few results before the crash")
        daemon.kill9()
    finally:
        daemon.close()
    done_before = len(audit_rows(dirs["state"]))
    assert done_before < len(names), "the crash should have come mid-batch"
    daemon = DaemonProcess(dirs["config"], dirs["log"])
    try:
        wait_for(lambda: len(audit_rows(dirs["state"])) >= len(names), 120, "every input after restart")
        time.sleep(2)  # nothing more should arrive
    finally:
        daemon.close()
    rows = audit_rows(dirs["state"])
    per_input = Counter(r["input"]["key"] for r in rows)
    assert per_input == Counter({n: 1 for n in names}), per_input
    assert all(r["outcome"] == "ok" for r in rows)
    for n in names:
        assert (dirs["outgoing"] / n).exists()
        record = json.loads((dirs["outgoing"] / f"{n}.audit.json").read_text())
        assert record["outputs"][0]["sha256"] == sha(dirs["outgoing"] / n)
        Image.open(dirs["outgoing"] / n).load()  # complete files only: writes are atomic


def test_sigterm_drains_the_job_in_progress(dirs):
    daemon = DaemonProcess(dirs["config"], dirs["log"])
    try:
        daemon.wait_event("worker.ready")
        shutil.copy(PASCAL[3], dirs["incoming"] / "drain.jpg")
        wait_for(lambda: any(e.get("event") == "job.queued" for e in daemon.events()), 30, "job queued")
        time.sleep(0.3)  # the worker has leased it and is inside the model
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    rows = audit_rows(dirs["state"])
    assert [r["outcome"] for r in rows] == ["ok"]
    assert (dirs["outgoing"] / "drain.jpg").exists()


def test_dead_worker_is_replaced_and_its_job_retried(dirs):
    daemon = DaemonProcess(dirs["config"], dirs["log"])
    try:
        daemon.wait_event("worker.ready")
        started = [e for e in daemon.events() if e.get("event") == "worker.started"]
        os.kill(started[0]["pid"], signal.SIGKILL)
        daemon.wait_event("worker.died")
        daemon.wait_event("worker.ready", count=2)
        shutil.copy(PASCAL[4], dirs["incoming"] / "after-crash.jpg")
        wait_for(lambda: (dirs["outgoing"] / "after-crash.jpg.audit.json").exists(), 60, "result after respawn")
        assert daemon.proc.poll() is None, "the daemon must stay up"
    finally:
        daemon.close()


def test_timeout_fails_closed_into_quarantine_with_reason(tmp_path):
    d = {k: tmp_path / k for k in ("incoming", "outgoing", "state")}
    for p in d.values():
        p.mkdir()
    config = write_config(tmp_path / "fw.toml", d["incoming"], d["outgoing"], d["state"],
                          extra="job_timeout = 0.3\nmax_attempts = 2")
    # A 24-MP photo: detection takes seconds, far past the 0.3 s job timeout.
    big = tmp_path / "big.jpg"
    src = Image.open(PASCAL[5])
    src.resize((src.width * 12, src.height * 12)).save(big, quality=85)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_event("worker.ready")
        shutil.copy(big, d["incoming"] / "slow.jpg")
        wait_for(lambda: any(r["outcome"] == "quarantined" for r in audit_rows(d["state"])), 120,
                 "quarantine record")
    finally:
        daemon.close()
    (record,) = audit_rows(d["state"])
    assert record["reason"]["code"] == "processing.timeout"
    assert not (d["outgoing"] / "slow.jpg").exists(), "fail closed: nothing in the output"
    quarantined = d["state"] / "quarantine" / "incoming" / "slow.jpg"
    assert quarantined.read_bytes() == big.read_bytes()
    assert json.loads((quarantined.parent / "slow.jpg.audit.json").read_text())["hash"] == record["hash"]


def test_bad_inputs_get_reasons_and_the_daemon_keeps_running(dirs):
    inc = dirs["incoming"]
    (inc / "empty.jpg").write_bytes(b"")
    (inc / "text.jpg").write_text("not a picture\n")
    (inc / "truncated.jpg").write_bytes(PASCAL[0].read_bytes()[:4000])
    Image.new("RGB", (1, 1)).save(inc / "one-pixel.png")
    (inc / "name with\nnewline.jpg").write_bytes(PASCAL[1].read_bytes())
    (inc / "ünïcödé 名前.jpg").write_bytes(PASCAL[2].read_bytes() + b"x")
    daemon = DaemonProcess(dirs["config"], dirs["log"])
    try:
        wait_for(lambda: len(audit_rows(dirs["state"])) >= 6, 90, "six records")
        assert daemon.proc.poll() is None
    finally:
        daemon.close()
    by_key = {r["input"]["key"]: r for r in audit_rows(dirs["state"])}
    assert by_key["empty.jpg"]["reason"]["code"] == "input.empty"
    assert by_key["text.jpg"]["reason"]["code"] == "input.not_an_image"
    assert by_key["truncated.jpg"]["reason"]["code"] == "input.truncated"
    assert by_key["one-pixel.png"]["reason"]["code"] == "input.too_small"
    assert by_key["name with\nnewline.jpg"]["outcome"] == "ok"
    assert by_key["ünïcödé 名前.jpg"]["outcome"] == "ok"
    for bad in ("empty.jpg", "text.jpg", "truncated.jpg", "one-pixel.png"):
        assert not (dirs["outgoing"] / bad).exists()
    out = np.asarray(Image.open(dirs["outgoing"] / "ünïcödé 名前.jpg"))
    assert out.shape[2] == 3
