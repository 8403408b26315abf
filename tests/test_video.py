"""Video anonymization on clips made at test time from the shared PASCAL photos
(bench/make_clips.py: a camera panning and zooming over photos with known face boxes, a
440 Hz tone as audio). Real PyAV/FFmpeg, real detector, no mocks."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.make_clips import make_clip
from facewarden.errors import InputRejected
from facewarden.handlers import video as video_handlers
from facewarden.handlers.base import HandlerContext
from facewarden.video.media import sniff
from facewarden.video.probe import VideoLimits

SECRET_META = {"location": "+48.8577+002.2945/", "make": "AcmeCam", "model": "Model 9",
               "creation_time": "2024-01-02T03:04:05Z", "title": "Alice at home"}


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def video_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def run(models_dir: Path, src: Path, dst: Path, params: dict | None = None, limits: VideoLimits | None = None):
    h = video_handlers.get("anonymize")
    return h.run_file(src, dst, params or {}, HandlerContext(models_dir=models_dir), limits=limits)


@pytest.fixture(scope="module")
def mp4_case(tmp_path_factory: pytest.TempPathFactory, models_dir: Path):
    d = tmp_path_factory.mktemp("video")
    src, dst = d / "in.mov", d / "out.mov"
    gt = make_clip(src, size=(640, 360), fps=25, seconds=2.0, container="mov", metadata=SECRET_META,
                   chapters=["Alice arrives", "Bob speaks"])
    seen = []
    h = video_handlers.get("anonymize")
    result = h.run_file(src, dst, {}, HandlerContext(models_dir=models_dir),
                        progress=lambda phase, done, total: seen.append((phase, done, total)))
    return src, dst, gt, result, seen


def test_same_shape_frames_and_duration(mp4_case) -> None:
    src, dst, gt, result, _ = mp4_case
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert (vb.codec_context.width, vb.codec_context.height) == (640, 360)
        assert vb.codec_context.name == "h264"
        assert vb.average_rate == va.average_rate == Fraction(25)
        assert abs(float(vb.duration * vb.time_base) - float(va.duration * va.time_base)) < 0.05
        assert "mov" in b.format.name
    assert len(video_frames(dst)) == gt["frames"] == result.facts["frames"] == 50


def test_audio_packets_are_copied_byte_for_byte(mp4_case) -> None:
    src, dst, *_ = mp4_case
    before, after = audio_packets(src), audio_packets(dst)
    assert len(before) > 50
    assert after == before


def test_metadata_is_stripped(mp4_case) -> None:
    src, dst, *_ = mp4_case
    raw_in, raw_out = src.read_bytes(), dst.read_bytes()
    assert b"48.8577" in raw_in and b"AcmeCam" in raw_in and b"Alice arrives" in raw_in  # really there
    for value in [*SECRET_META.values(), "Alice arrives", "Bob speaks"]:
        assert value.encode()[:10] not in raw_out
    with av.open(str(src)) as c:
        assert len(c.chapters()) == 2
    with av.open(str(dst)) as c:
        assert not set(c.metadata) & {"location", "make", "model", "creation_time", "title"}
        assert c.chapters() == []
        assert all(set(s.metadata) <= {"language", "handler_name", "vendor_id", "encoder"} for s in c.streams)


def test_gt_faces_are_obscured_and_background_is_not(mp4_case) -> None:
    src, dst, gt, result, _ = mp4_case
    a, b = video_frames(src), video_frames(dst)
    changed = total = 0
    bg = np.ones(a[0].shape[:2], bool)
    for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
        for _fid, x, y, w, h in gt["boxes"][i]:
            if w < 12 or h < 12:
                continue
            x0, y0, x1, y1 = int(x + w * 0.2), int(y + h * 0.2), int(x + w * 0.8), int(y + h * 0.8)
            region_a = fa[y0:y1, x0:x1].astype(np.int16)
            region_b = fb[y0:y1, x0:x1].astype(np.int16)
            # blurred: the local detail (difference to a shifted copy) collapses
            detail_a = np.abs(np.diff(region_a, axis=1)).mean()
            detail_b = np.abs(np.diff(region_b, axis=1)).mean()
            total += 1
            changed += detail_b < 0.6 * detail_a
            bg[max(0, int(y) - 20):int(y + h) + 20, max(0, int(x) - 20):int(x + w) + 20] = False
    assert total > 300
    assert changed / total >= 0.97, (changed, total)
    diff_bg = np.abs(a[10].astype(np.int16) - b[10].astype(np.int16)).mean(axis=2)
    assert diff_bg[bg].mean() < 4.0  # re-encoding only: the rest of the picture is kept
    assert result.facts["tracks"] >= 1 and result.facts["frames_with_faces"] == 50


def test_facts_and_progress(mp4_case) -> None:
    *_, result, seen = mp4_case
    f = result.facts
    assert f["encoder"]["codec"] == "libx264" and f["encoder"]["options"]["crf"] == "20"
    assert f["audio_packets_copied"] > 0 and f["duration_s"] == pytest.approx(2.0, abs=0.05)
    assert ("detect", 50, 50) in seen and ("encode", 50, 50) in seen


@pytest.mark.parametrize("container,codec", [("webm", "vp9"), ("mkv", "h264"), ("avi", "h264"), ("mp4", "h264")])
def test_containers_keep_family_frames_and_audio(tmp_path: Path, models_dir: Path, container: str, codec: str
                                                 ) -> None:
    src, dst = tmp_path / f"in.{container}", tmp_path / f"out.{container}"
    gt = make_clip(src, size=(320, 180), fps=30, seconds=1.0, container=container)
    result = run(models_dir, src, dst)
    with open(dst, "rb") as fh:
        assert sniff(fh.read(64)) == container
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.name == codec
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (320, 180)
    assert len(video_frames(dst)) == gt["frames"] == result.facts["frames"]
    assert audio_packets(dst) == audio_packets(src) != []


def test_rotation_is_applied_to_the_pixels(tmp_path: Path, models_dir: Path) -> None:
    """A phone's portrait video: pixels stored sideways plus a display rotation. The output
    is stored upright (no rotation left to apply) and shows what the input displays."""
    src, dst, ref = tmp_path / "rot.mp4", tmp_path / "out.mp4", tmp_path / "upright.mp4"
    make_clip(src, size=(320, 180), fps=25, seconds=0.4, container="mp4", rotation=90, audio=False)
    make_clip(ref, size=(320, 180), fps=25, seconds=0.4, container="mp4", audio=False)
    with av.open(str(src)) as c:
        first = next(c.decode(video=0))
        assert first.rotation == 90 and (first.width, first.height) == (180, 320)
    result = run(models_dir, src, dst)
    assert result.facts["rotation_quarter_turns"] == 1
    with av.open(str(dst)) as c:
        f = next(c.decode(video=0))
        assert (f.width, f.height) == (320, 180) and not f.rotation
    out, up = video_frames(dst)[0].astype(np.int16), video_frames(ref)[0].astype(np.int16)
    assert np.abs(out - up).mean() < 12  # upright content (faces blurred, the rest equal)
    assert np.abs(out - up[::-1, ::-1]).mean() > 2 * np.abs(out - up).mean()


def test_rejections_by_name(tmp_path: Path, models_dir: Path) -> None:
    def code(path: Path, limits: VideoLimits | None = None) -> str:
        with pytest.raises(InputRejected) as exc:
            run(models_dir, path, tmp_path / "out.bin", limits=limits)
        return exc.value.code

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert code(empty) == "video.empty"
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    assert code(garbage) == "video.corrupt"
    # audio only
    audio = tmp_path / "tone.mkv"
    out = av.open(str(audio), "w", format="matroska")
    s = out.add_stream("aac", rate=48000)
    s.layout = "mono"
    for i in range(20):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 48000, i * 1024
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
    assert code(audio) == "video.no_video_stream"
    clip = tmp_path / "clip.mkv"
    make_clip(clip, size=(320, 180), fps=25, seconds=2.0, container="mkv")
    assert code(clip, VideoLimits(max_duration_s=1.0)) == "video.too_long"
    assert code(clip, VideoLimits(max_frame_pixels=320 * 100)) == "video.too_large"
    assert code(clip, VideoLimits(max_total_pixels=320 * 180 * 10)) == "video.too_large"
    assert code(clip, VideoLimits(max_seconds=1e-6)) == "video.timeout"  # the job's wall-clock budget
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    assert code(cut) == "video.truncated"
    cut_mp4 = tmp_path / "cut.mp4"
    full = tmp_path / "full.mp4"
    make_clip(full, size=(320, 180), fps=25, seconds=1.0, container="mp4")
    cut_mp4.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # moov (at the end) is lost
    assert code(cut_mp4) == "video.truncated"


def test_params() -> None:
    h = video_handlers.get("anonymize")
    p = h.validate_params({"crf": 23, "preset": "fast", "mode": "pixelate", "jpeg_quality": 80})
    assert p["crf"] == 23 and p["preset"] == "fast" and p["mode"] == "pixelate" and "jpeg_quality" not in p
    for bad in ({"crf": 99}, {"preset": "warp"}, {"detect_every": 0}, {"bogus": 1}):
        with pytest.raises(InputRejected) as exc:
            h.validate_params(bad)
        assert exc.value.code == "params.invalid"
    with pytest.raises(InputRejected) as exc:
        video_handlers.get("idphoto")
    assert exc.value.code == "video.unsupported_handler"


def test_sniff() -> None:
    assert sniff(b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00") == "mp4"
    assert sniff(b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00") == "mov"
    assert sniff(b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00") is None  # a HEIC photo
    assert sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm") == "webm"
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") == "avi"
    assert sniff(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None


def test_tracks_fill_gaps_pad_ends_and_merge() -> None:
    from facewarden.video.tracks import Tracker, TrackParams, covering_boxes

    p = TrackParams(pad=2, max_gap=3)
    tr = Tracker(p)
    # one face moving right 4 px a frame, missed on frames 3 and 4; a second, still face
    for f in range(10):
        boxes = [] if f in (3, 4) else [(100.0 + 4 * f, 50.0, 40.0, 40.0, 0.9)]
        if f >= 6:
            boxes.append((400.0, 300.0, 30.0, 30.0, 0.8))
        tr.add(f, boxes)
    assert len(tr.tracks) == 2 and tr.frames_with_detections == 8
    covers = covering_boxes(tr.tracks, 12, p)
    gap = covers[3][0]
    assert gap[0] <= 112 and gap[0] + gap[2] >= 152  # interpolated over the face at x=112..152
    assert len([b for b in covers[4] if b[0] < 300]) == 1  # the moving face, once
    assert [f for f in covers if any(b[0] > 300 for b in covers[f])] == [4, 5, 6, 7, 8, 9, 10, 11]
    assert 11 in covers and 12 not in covers  # padded to the clip's end, not beyond
    # a face far away in the next frame starts a new track rather than dragging the old one
    tr2 = Tracker(p)
    tr2.add(0, [(0.0, 0.0, 20.0, 20.0, 0.9)])
    tr2.add(1, [(500.0, 500.0, 20.0, 20.0, 0.9)])
    assert len(tr2.tracks) == 2


def test_merge_boxes_keeps_the_union() -> None:
    from facewarden.video.tracks import merge_boxes

    merged = merge_boxes([(10.0, 10.0, 40.0, 40.0, 0.5), (14.0, 12.0, 40.0, 40.0, 0.9), (200.0, 0, 10, 10, 0.3)])
    assert sorted(merged) == [(10.0, 10.0, 44.0, 42.0, 0.9), (200.0, 0, 10, 10, 0.3)]


def test_frames_without_faces_pass_through_unchanged_but_reencoded(tmp_path: Path, models_dir: Path) -> None:
    src, dst = tmp_path / "plain.mp4", tmp_path / "out.mp4"
    out = av.open(str(src), "w")
    s = out.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
    for i in range(12):
        img = np.zeros((180, 320, 3), np.uint8)
        img[:, :, 0] = np.linspace(0, 255, 320, dtype=np.uint8)[None, :]
        img[:, :, 1] = i * 20
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
    result = run(models_dir, src, dst)
    assert result.facts["frames_with_faces"] == 0 and result.facts["frames"] == 12
    a, b = video_frames(src), video_frames(dst)
    assert len(b) == 12
    assert max(np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b, strict=True)) < 2.0


def test_pads_follow_a_moving_face() -> None:
    from facewarden.video.tracks import Tracker, TrackParams, covering_boxes

    p = TrackParams(pad=2, grow_per_frame=0.0)
    tr = Tracker(p)
    for f in range(5, 10):  # moving 10 px a frame to the right
        tr.add(f, [(100.0 + 10 * (f - 5), 0.0, 40.0, 40.0, 0.9)])
    covers = covering_boxes(tr.tracks, 20, p)
    assert covers[3][0][0] == pytest.approx(80.0) and covers[11][0][0] == pytest.approx(160.0)


def test_frames_above_1080p_are_searched_in_tiles_without_losing_faces(models_dir: Path) -> None:
    """A 2560x1440 frame is searched as 2x2 overlapping tiles plus a half-size pass; the
    PASCAL photos pasted across the tile seams still have every GT face covered."""
    from bench.common import COVER, covered, load_pascal
    from facewarden.handlers.anonymize import face_mask
    from facewarden.models.protocols import Face
    from facewarden.video.faces import detect_frame, frame_detector, tiles

    t = tiles(2560, 1440)
    assert len(t) == 4
    cover = np.zeros((1440, 2560), int)
    for x0, y0, x1, y1 in t:
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1 and (cover >= 2).sum(axis=1).max() >= 256  # seams overlap by >= 256 px

    samples = load_pascal()[:4]
    frame = np.full((1440, 2560, 3), 110, np.uint8)
    gt = []
    # a 2x2 grid of photos (1.5x, faces 55-160 px) around the frame centre, across the tile seams
    for i, s in enumerate(samples):
        k = min(1.5, 700 / s.rgb.shape[0], 1260 / s.rgb.shape[1])
        big = cv2.resize(s.rgb, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
        h, w = big.shape[:2]
        px = 1275 - w if i % 2 == 0 else 1285
        py = 715 - h if i < 2 else 725
        frame[py:py + h, px:px + w] = big
        gt += [(px + k * x, py + k * y, k * bw, k * bh) for x, y, bw, bh in s.boxes]
    det = frame_detector(models_dir, video_handlers.get("anonymize").validate_params({}))
    boxes = detect_frame(det, frame)
    mask = face_mask(1440, 2560, [Face(*b[:4], b[4]) for b in boxes], margin=0.2)
    found = sum(covered(mask, g) >= COVER for g in gt)
    whole = face_mask(1440, 2560, det.detect(frame), margin=0.2)  # the detector on the whole frame
    found_whole = sum(covered(whole, g) >= COVER for g in gt)
    assert len(gt) >= 15 and found == len(gt) and found >= found_whole, (found, found_whole, len(gt))


def test_photo_anonymize_ignores_video_params() -> None:
    from facewarden.handlers.anonymize import VIDEO_ONLY_PARAMS, AnonymizeHandler

    assert set(VIDEO_ONLY_PARAMS) == {*video_handlers.VIDEO_INT_PARAMS, "preset"}
    assert AnonymizeHandler().validate_params({"crf": 30, "preset": "fast", "mode": "fill"})["mode"] == "fill"
    with pytest.raises(InputRejected):
        AnonymizeHandler().validate_params({"crff": 30})
