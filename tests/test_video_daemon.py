"""A video dropped into the watched folder, through the real daemon (folder source, SQLite
queue, worker process). Its job runs longer than ``workers.job_timeout``, yet it is not
killed: the supervisor sees it making progress (STATE/progress/<job>.json)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import av
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.make_clips import make_clip
from tests.daemon_harness import DaemonProcess, audit_rows, wait_for, write_config

pytestmark = pytest.mark.slow


def test_long_video_job_outlives_the_job_timeout_while_it_makes_progress(tmp_path: Path) -> None:
    d = {k: tmp_path / k for k in ("incoming", "outgoing", "state")}
    for p in d.values():
        p.mkdir()
    config = write_config(tmp_path / "fw.toml", d["incoming"], d["outgoing"], d["state"],
                          extra="job_timeout = 3.0\nmax_attempts = 1", route_extra='params = { crf = 26 }')
    clip = tmp_path / "lecture.mkv"
    make_clip(clip, size=(640, 360), fps=25, seconds=10.0, container="mkv")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_event("worker.ready")
        shutil.copy(clip, d["incoming"] / "lecture.mkv")
        wait_for(lambda: bool(audit_rows(d["state"])), 240, "the video's audit record")
        events = daemon.events()
    finally:
        daemon.close()
    record = json.loads((d["outgoing"] / "lecture.mkv.audit.json").read_text())
    assert record["outcome"] == "ok" and record["attempt"] == 1
    assert record["timings"]["total_ms"] > 3000, "the job must have outlived job_timeout for this test to mean anything"
    assert not any(e.get("event") == "job.timeout" for e in events)
    assert any(e.get("event") == "video.progress" for e in events)
    out = d["outgoing"] / "lecture.mkv"
    assert record["outputs"][0]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record["facts"]["encoder"]["options"]["crf"] == "26" and record["facts"]["frames"] == 250
    with av.open(str(out)) as c:
        assert sum(1 for p in c.demux(c.streams.video[0]) if p.size) == 250
    assert [r["outcome"] for r in audit_rows(d["state"])] == ["ok"]
