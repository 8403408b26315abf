"""Native libraries' console output is captured while models load; our own log lines still
reach stderr, and a whole `facewarden process` run prints JSON log lines only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from facewarden.daemon.logs import configure_logging
from facewarden.models.quiet import native_output

#: Fragments of the third-party lines seen before the capture existed (LiteRT, glog, XNNPACK).
THIRD_PARTY = ("Sparsity tensors", "LiteRT", "XNNPACK", "InitGoogle", "W0000", "I0000", "inference_",
               "TensorFlow", "onnxruntime", "Traceback")


def test_fd_writes_are_captured_and_our_logs_still_reach_stderr(capfd, monkeypatch):
    configure_logging("json", "debug")
    try:
        with native_output("test-lib"):
            os.write(2, b"WARNING: native noise\nWARNING: native noise\n")
            os.write(1, b"I0000 more native noise\n")
            structlog.get_logger().info("our.event", n=1)
        out, err = capfd.readouterr()
    finally:
        configure_logging("json", "info")
    assert out == ""
    lines = [json.loads(line) for line in err.splitlines()]  # no raw native line in between
    assert any(e["event"] == "our.event" for e in lines)  # written while fd 2 was captured
    native = [e for e in lines if e["event"] == "native.output"]
    assert {(e["line"], e["repeat"]) for e in native} == {("WARNING: native noise", 2),
                                                          ("I0000 more native noise", 1)}
    assert all(e["source"] == "test-lib" and e["level"] == "debug" for e in native)


def test_fds_are_restored_after_an_error(capfd):
    with pytest.raises(RuntimeError), native_output("x"):
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert "after" in capfd.readouterr().err


@pytest.mark.parametrize(("handler", "photo"), [
    ("anonymize", "wider-dev/images/0_Parade_marchingband_1_104.jpg"),
    ("idphoto", "idphoto-specs/demo/images/test0.jpg"),
])
def test_process_prints_only_json_log_lines_on_stderr(tmp_path: Path, data_dir: Path, models_dir: Path,
                                                       handler: str, photo: str) -> None:
    exe = Path(sys.executable).with_name("facewarden")
    proc = subprocess.run(
        [str(exe), "process", str(data_dir / photo), "--handler", handler, "--out", str(tmp_path / "out"),
         "--state", str(tmp_path / "state"), "--models-dir", str(models_dir)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": ok" in proc.stdout  # the models really loaded and ran
    for line in proc.stderr.splitlines():
        assert not any(marker in line for marker in THIRD_PARTY), line
        assert "event" in json.loads(line), line
    for line in proc.stdout.splitlines():
        assert not any(marker in line for marker in THIRD_PARTY), line
