"""Videos through the daemon's pipeline: routed by media type, streamed through temp files,
published atomically (folder: temp + rename; S3: multipart upload via moto's real HTTP
server), audited with both hashes, deduplicated, quarantined by name, and restartable
after a crash mid-video. Clips are made at test time (bench/make_clips.py)."""
# ruff: noqa: F811  (pytest fixtures imported from fixture modules are re-bound as arguments)

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import av
import pytest
from fixtures_s3 import REGION, make_store, moto_server, s3_client, s3_env  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.make_clips import make_clip
from facewarden.config.schema import Settings
from facewarden.daemon import video_job
from facewarden.daemon.jobs import Event, Job
from facewarden.daemon.pipeline import Pipeline
from facewarden.daemon.routing import Router
from facewarden.daemon.sources.amqp_jobs import parse_message
from facewarden.storage.local import LocalStore
from facewarden.storage.stores import open_stores
from facewarden.video import encode
from facewarden.video.progress import making_progress


def _settings(tmp: Path, models_dir: Path, **extra: Any) -> Settings:
    return Settings.model_validate({
        "state_dir": str(tmp / "state"), "models_dir": str(models_dir),
        "stores": {"incoming": {"root": str(tmp / "in")}, "outgoing": {"root": str(tmp / "out")}},
        "sources": [{"name": "incoming", "store": "incoming"}],
        "routes": [
            {"source": "incoming", "media": "video", "handler": "anonymize", "params": {"crf": 24}},
            {"source": "incoming", "media": "image", "handler": "anonymize", "params": {"mode": "pixelate"}},
        ], **extra})


def _audio(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_media_routes_pick_params_and_video_goes_through_the_pipeline(tmp_path: Path, models_dir: Path) -> None:
    settings = _settings(tmp_path, models_dir)
    clip = tmp_path / "in" / "talks" / "day 1.mp4"
    clip.parent.mkdir(parents=True)
    make_clip(clip, size=(320, 180), fps=25, seconds=1.0, container="mp4")
    router = Router(settings)
    assert router.route(Event("incoming", "talks/p.jpg", "incoming")).params == {"mode": "pixelate"}
    job = router.route(Event("incoming", "talks/day 1.mp4", "incoming"))
    assert job.params == {"crf": 24}
    pipe = Pipeline(settings, open_stores(settings.all_stores()))
    pipe.warm_up()  # video route params validate against the video handler
    outcome = pipe.process(job)
    assert outcome.outcome == "ok", outcome.record.get("reason")
    out = tmp_path / "out" / "talks" / "day 1.mp4"
    assert outcome.outputs == ["talks/day 1.mp4"]
    rec = json.loads((tmp_path / "out" / "talks" / "day 1.mp4.audit.json").read_text())
    assert rec["input"]["sha256"] == _sha(clip) and rec["outputs"][0]["sha256"] == _sha(out)
    facts = rec["facts"]
    assert facts["frames"] == 25 and facts["duration_s"] == pytest.approx(1.0, abs=0.05)
    assert facts["frames_with_faces"] > 0 and facts["tracks"] > 0
    assert facts["encoder"] == {"codec": "libx264", "pix_fmt": "yuv420p", "threads": 1,
                                "options": {"crf": "24", "preset": "veryfast"}}
    assert rec["outputs"][0]["content_type"] == "video/mp4"
    assert _audio(out) == _audio(clip)
    # nothing left behind: no temp files beside the result, no work folder, no progress file
    assert sorted(p.name for p in out.parent.iterdir()) == ["day 1.mp4", "day 1.mp4.audit.json"]
    assert not any((tmp_path / "state" / "video-work").iterdir())
    assert video_job.read_progress(tmp_path / "state", job.id) is None
    # the same bytes again: a duplicate, not a second encode
    again = pipe.process(router.route(Event("incoming", "talks/day 1.mp4", "incoming")))
    assert again.outcome == "duplicate"


def test_bad_video_is_quarantined_by_name_and_nothing_is_written(tmp_path: Path, models_dir: Path) -> None:
    settings = _settings(tmp_path, models_dir)
    full = tmp_path / "full.mkv"
    make_clip(full, size=(320, 180), fps=25, seconds=2.0, container="mkv")
    cut = tmp_path / "in" / "cut.mkv"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    job = Router(settings).route(Event("incoming", "cut.mkv", "incoming"))
    outcome = Pipeline(settings, open_stores(settings.all_stores())).process(job)
    assert outcome.outcome == "rejected" and outcome.record["reason"]["code"] == "video.truncated"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.mkv"))
    assert (tmp_path / "state" / "quarantine" / "incoming" / "cut.mkv").read_bytes() == cut.read_bytes()


class _Crash(BaseException):
    """Stands in for the worker process dying mid-encode (not an error the pipeline handles)."""


def test_crash_mid_video_publishes_nothing_and_the_retry_starts_clean(tmp_path: Path, models_dir: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, models_dir)
    clip = tmp_path / "in" / "c.mkv"
    clip.parent.mkdir(parents=True)
    make_clip(clip, size=(320, 180), fps=25, seconds=1.0, container="mkv")
    job = Router(settings).route(Event("incoming", "c.mkv", "incoming"))
    pipe = Pipeline(settings, open_stores(settings.all_stores()))
    real = encode.VideoWriter.write_frame
    calls = {"n": 0}

    def dying(self, rgb, pts):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 10:
            status = video_job.read_progress(settings.state_dir, job.id)  # the job's status, mid-video
            calls["status"] = status
            calls["moving"] = making_progress(settings.state_dir, job.id, 60.0)
            raise _Crash()
        return real(self, rgb, pts)

    monkeypatch.setattr(encode.VideoWriter, "write_frame", dying)
    monkeypatch.setattr(video_job, "PROGRESS_EVERY_S", 0.0)  # every frame updates the status
    # a real crash skips clean-up: leave a stale partial output in the job's work folder too
    stale = video_job.work_dir(settings, job.id)
    with pytest.raises(_Crash):
        pipe.process(job)
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "output").write_bytes(b"partial")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    assert pipe.audit.find_job(job.id) is None
    assert calls["status"]["phase"] == "encode" and calls["status"]["frames_total"] == 25
    assert calls["status"]["frames_done"] == 9 and calls["moving"]  # the supervisor will not kill it
    monkeypatch.setattr(encode.VideoWriter, "write_frame", real)
    outcome = pipe.process(job)  # redelivery
    assert outcome.outcome == "ok"
    out = tmp_path / "out" / "c.mkv"
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 25
    assert not stale.exists()


def test_video_under_a_photo_name_is_sniffed(tmp_path: Path, models_dir: Path) -> None:
    settings = _settings(tmp_path, models_dir)
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "upload.bin", size=(320, 180), fps=25, seconds=0.4, container="mp4")
    job = Job(handler="anonymize", params={}, store="incoming", key="upload.bin", target="outgoing")
    outcome = Pipeline(settings, open_stores(settings.all_stores())).process(job)
    assert outcome.outcome == "ok", outcome.record.get("reason")
    assert outcome.outputs == ["upload.mp4"] and outcome.record["input"]["media"] == "video"


def test_s3_video_is_streamed_and_published_by_multipart_upload(tmp_path: Path, models_dir: Path,
                                                                 s3_env: str, s3_client: Any) -> None:
    for b in ("raw", "anon"):
        s3_client.create_bucket(Bucket=b)
    clip = tmp_path / "clip.webm"
    make_clip(clip, size=(320, 180), fps=25, seconds=1.0, container="webm")
    s3_client.put_object(Bucket="raw", Key="cams/clip.webm", Body=clip.read_bytes())
    settings = Settings.model_validate({"state_dir": str(tmp_path / "state"), "models_dir": str(models_dir)})
    raw, anon = make_store(s3_env, "raw", "raw"), make_store(s3_env, "anon", "anon")
    anon.multipart_threshold = 64 * 1024  # every output goes up as a multipart upload
    stores = {"raw": raw, "anon": anon, "quarantine": LocalStore("quarantine", tmp_path / "q")}
    job = Job(handler="anonymize", params={}, store="raw", key="cams/clip.webm", target="anon")
    outcome = Pipeline(settings, stores).process(job)
    assert outcome.outcome == "ok", outcome.record.get("reason")
    head = s3_client.head_object(Bucket="anon", Key="cams/clip.webm")
    assert head["ETag"].strip('"').endswith("-1")  # an S3 multipart upload's ETag
    assert head["ContentType"] == "video/webm"
    got = tmp_path / "got.webm"
    got.write_bytes(s3_client.get_object(Bucket="anon", Key="cams/clip.webm")["Body"].read())
    assert _audio(got) == _audio(clip)
    rec = json.loads(s3_client.get_object(Bucket="anon", Key="cams/clip.webm.audit.json")["Body"].read())
    assert rec["outputs"][0]["sha256"] == _sha(got) and rec["facts"]["encoder"]["codec"] == "libvpx-vp9"


def test_job_message_params_validate_against_the_video_handler() -> None:
    body = json.dumps({"schema": "facewarden.job/1", "input": {"store": "raw", "key": "a/b.mov"},
                       "handler": "anonymize", "params": {"crf": 28, "preset": "fast"}}).encode()
    msg, _ = parse_message(body, stores={"raw"})
    assert msg.params == {"crf": 28, "preset": "fast"}


def test_job_status_shows_a_running_videos_progress(tmp_path: Path) -> None:
    from facewarden.daemon.app import JobStatus
    from facewarden.daemon.queues.sqlite import SqliteQueue
    from facewarden.storage.audit import AuditLog
    from facewarden.video.progress import write_progress

    queue = SqliteQueue(tmp_path / "queue.db")
    job = Job(handler="anonymize", params={}, store="incoming", key="a.mp4", target="outgoing")
    queue.put(job)
    status = JobStatus(queue, AuditLog(tmp_path), tmp_path)
    assert queue.get("w1", timeout=1.0) is not None
    write_progress(tmp_path, {"job_id": job.id, "phase": "encode", "frames_done": 120, "frames_total": 300,
                              "updated_at": 0})
    assert status.status(job.id) == {"id": job.id, "state": "running",
                                     "progress": {"phase": "encode", "frames_done": 120, "frames_total": 300}}


def test_dms_webhook_upload_of_a_video_is_anonymized(tmp_path: Path, models_dir: Path) -> None:
    """The DMS webhook (real HTTP, signed multipart upload) stores the video and emits its
    event; the routed job goes through the pipeline like any other."""
    import time as _time

    import httpx

    from facewarden.daemon.http import build_app, serve_in_thread
    from facewarden.daemon.sources import SourceContext, build_source
    from facewarden.daemon.sources.dms_webhook import sign

    secret = "0123456789abcdef0123456789abcdef"
    settings = Settings.model_validate({
        "state_dir": str(tmp_path / "state"), "models_dir": str(models_dir),
        "stores": {"raw": {"root": str(tmp_path / "raw")}, "outgoing": {"root": str(tmp_path / "out")}},
        "sources": [{"type": "dms-webhook", "name": "dms", "secret": secret, "store": "raw", "raw_store": "raw"}],
        "routes": [{"source": "dms", "media": "video", "handler": "anonymize"}]})
    stores = open_stores(settings.all_stores())
    clip = tmp_path / "talk.webm"
    make_clip(clip, size=(320, 180), fps=25, seconds=0.6, container="webm")
    cfg = dict(type="dms-webhook", name="dms", secret=secret, store="raw", raw_store="raw",
               max_body_bytes=20_000_000)
    source = build_source(cfg, SourceContext(stores=stores, settings=None, services={}))
    events: list[Event] = []
    source.start(lambda ev: events.append(ev) or ev.hints["job_id"])
    handle = serve_in_thread(build_app(sources=[source]), "127.0.0.1", 0)
    try:
        boundary = "fwvideo42"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="talk.webm"\r\n'
                "Content-Type: video/webm\r\n\r\n").encode() + clip.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        stamp = str(int(_time.time()))
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            resp = client.post("/webhooks/dms", content=body, headers={
                "X-Facewarden-Timestamp": stamp, "X-Facewarden-Signature": sign(secret.encode(), stamp, body),
                "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert resp.status_code == 202, resp.text
    finally:
        handle.stop()
    job = Router(settings).route(events[0])
    outcome = Pipeline(settings, stores).process(job)
    assert outcome.outcome == "ok", outcome.record.get("reason")
    out = tmp_path / "out" / outcome.outputs[0]
    assert out.name == "talk.webm" and _audio(out) == _audio(clip)
