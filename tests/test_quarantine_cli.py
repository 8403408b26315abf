"""`facewarden quarantine`: list and show entries, retry one after a fix, release one to a
person, purge after a retention period; each action audited, the chain intact."""

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


def fw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "facewarden", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def quarantined(tmp_path, data_dir, models_dir) -> dict[str, Path]:
    """Three real photos rejected as too large by a strict config, as a batch would be."""
    photos = sorted((data_dir / "faces-pascal").glob("*.jpg"))[:3]
    inbox = tmp_path / "in"
    inbox.mkdir()
    for p in photos:
        shutil.copy(p, inbox / p.name)
    strict = tmp_path / "strict.toml"
    strict.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{models_dir}"\n'
                      "[limits]\nmax_pixels = 10000\n")
    normal = tmp_path / "normal.toml"
    normal.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{models_dir}"\n')
    done = fw("process", str(inbox), "--out", str(tmp_path / "out"), "--config", str(strict), "-j", "1",
              cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    return {"inbox": inbox, "strict": strict, "normal": normal, "state": tmp_path / "state"}


def entries(q: dict[str, Path], cwd: Path) -> list[dict]:
    out = fw("quarantine", "list", "--json", "--config", str(q["normal"]), cwd=cwd)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_list_show_retry_release_purge(quarantined, tmp_path):
    q = quarantined
    listed = entries(q, tmp_path)
    assert len(listed) == 3
    assert {e["code"] for e in listed} == {"input.too_large"}
    assert all(e["present"] for e in listed)
    first, second, third = (e["seq"] for e in listed)

    shown = fw("quarantine", "show", str(first), "--config", str(q["normal"]), cwd=tmp_path)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["record"]["reason"]["code"] == "input.too_large"

    # Retry after the fix (normal limits): a result and its own ok record.
    retried = fw("quarantine", "retry", str(first), "--out", str(tmp_path / "retried"),
                 "--config", str(q["normal"]), cwd=tmp_path)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    name = listed[0]["input"]
    result = tmp_path / "retried" / name
    assert result.is_file()
    record = json.loads((tmp_path / "retried" / (name + ".audit.json")).read_text())
    assert record["outcome"] == "ok" and record["outputs"][0]["sha256"] == \
        hashlib.sha256(result.read_bytes()).hexdigest()
    assert record["input"]["sha256"] == hashlib.sha256((q["inbox"] / name).read_bytes()).hexdigest()

    # Release hands the unprocessed original to a person, out of quarantine, audited.
    released = fw("quarantine", "release", str(second), "--to", str(tmp_path / "handed"), "--reason",
                  "false rejection, checked by J.", "--config", str(q["normal"]), cwd=tmp_path)
    assert released.returncode == 0, released.stderr
    name2 = listed[1]["input"]
    assert (tmp_path / "handed" / name2).read_bytes() == (q["inbox"] / name2).read_bytes()

    # Purge by retention closes what is left; the bytes are gone, the records stay.
    purged = fw("quarantine", "purge", "--older-than", "0", "--config", str(q["normal"]), cwd=tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert entries(q, tmp_path) == []
    assert not any(p.is_file() and not p.name.endswith(".audit.json")
                   for p in (q["state"] / "quarantine").rglob("*"))
    log = AuditLog(q["state"])
    actions = [json.loads(text) for _s, _l, text, _h in log.iter_records() if json.loads(text)["kind"] == "quarantine"]
    assert [(a["action"], a["of"]["seq"]) for a in actions] == [("retry", first), ("release", second),
                                                                 ("purge", third)]
    assert actions[1]["why"] == "false rejection, checked by J."
    assert log.verify().ok
    # A closed entry cannot be acted on twice.
    again = fw("quarantine", "retry", str(first), "--out", str(tmp_path / "x"), "--config", str(q["normal"]),
               cwd=tmp_path)
    assert again.returncode != 0 and "already" in again.stderr


def test_retry_without_route_or_out_says_what_to_do(quarantined, tmp_path):
    first = entries(quarantined, tmp_path)[0]["seq"]
    done = fw("quarantine", "retry", str(first), "--config", str(quarantined["normal"]), cwd=tmp_path)
    assert done.returncode == 1
    assert "--out" in done.stdout
    assert len(entries(quarantined, tmp_path)) == 3  # nothing closed


def test_missing_state_is_an_error_not_an_empty_list(tmp_path):
    done = fw("quarantine", "list", "--state", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert done.returncode != 0
    assert not (tmp_path / "nowhere").exists()
