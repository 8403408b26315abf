"""`facewarden process` as a batch tool: worker processes, --json, a summary, exit codes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facewarden.storage.audit import AuditLog

pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "facewarden", "process", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def batch(tmp_path, data_dir) -> Path:
    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    for p in sorted((data_dir / "faces-pascal").glob("*.jpg"))[:4]:
        shutil.copy(p, folder / p.name)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return tmp_path / "in"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.jpg"))}


def test_two_workers_json_summary_and_exit_code(batch, tmp_path, models_dir):
    before = digest(batch)
    done = run(str(batch), "--out", str(tmp_path / "out"), "--state", str(tmp_path / "state"),
               "--models-dir", str(models_dir), "-j", "2", "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the broken file fails the batch
    items = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(items) == 5
    by_name = {Path(i["input"]).name: i for i in items}
    assert by_name["broken.jpg"]["outcome"] in ("rejected", "quarantined")
    assert by_name["broken.jpg"]["reason"]["code"].startswith("input.")
    ok = [i for i in items if i["outcome"] == "ok"]
    assert len(ok) == 4 and all(i["faces"] >= 1 for i in ok)
    assert "4 ok" in done.stderr and "input." in done.stderr  # the summary names the reason
    assert digest(batch) == before  # originals untouched
    # Every input exactly once, and the chain holds though two processes appended to it.
    log = AuditLog(tmp_path / "state")
    assert log.count() == 5
    assert log.verify().ok
    # Same bytes as one worker would write.
    single = run(str(batch), "--out", str(tmp_path / "out1"), "--state", str(tmp_path / "state1"),
                 "--models-dir", str(models_dir), "-j", "1", cwd=tmp_path)
    assert single.returncode == 1
    assert digest(tmp_path / "out") == digest(tmp_path / "out1")
    assert "4 ok, 0 already done, 1 rejected" in single.stdout or "4 ok, 0 already done, 0 rejected, 1 quarantined" \
        in single.stdout, single.stdout


def test_rerun_reports_already_done_and_exit_zero(batch, tmp_path, models_dir):
    (batch / "broken.jpg").unlink()
    args = (str(batch), "--out", str(tmp_path / "out"), "--state", str(tmp_path / "state"),
            "--models-dir", str(models_dir), "-j", "2")
    assert run(*args, cwd=tmp_path).returncode == 0
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0
    assert "4 already done" in again.stdout


def test_missing_models_stop_before_any_input_with_78(batch, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    done = run(str(batch), "--out", str(tmp_path / "out"), "--state", str(tmp_path / "state"),
               "--models-dir", str(empty), "-j", "2", cwd=tmp_path)
    assert done.returncode == 78, done.stdout + done.stderr
    assert "facewarden models install" in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
