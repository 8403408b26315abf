"""The two passes over one local video file, from input path to a finished output path.

Pass 1 decodes every frame, asks for faces (every frame, or every ``detect_every``-th)
and links them into tracks: only boxes are kept. Pass 2 decodes again, obscures each
frame with the boxes that cover it, encodes, and copies the audio packets across. The
output is then re-read (packets only) to check it holds exactly as many frames as the
input and every audio packet: a mismatch fails the job rather than publishing a video
with a frame or a second of sound missing or doubled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from facewarden.errors import FacewardenError, ProcessingFailed
from facewarden.handlers.anonymize import obscure_faces
from facewarden.models.protocols import Face, FaceDetector
from facewarden.video.encode import VideoWriter, choose_encoder
from facewarden.video.faces import detect_frame
from facewarden.video.probe import VideoInfo, VideoLimits, check_budget, open_input, probe, reject
from facewarden.video.tracks import Box, Tracker, TrackParams, covering_boxes

#: progress(phase, frames_done, frames_total); phase is "detect" or "encode".
Progress = Callable[[str, int, int], None]


@dataclass(slots=True)
class _Deadline:
    at: float
    limit: float

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise reject("video.timeout", f"the video took longer than the job's budget of {self.limit:.0f} s")


def upright(frame: av.VideoFrame, k: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make the frame upright (display matrix)."""
    try:
        rot = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        rot = 0.0
    return round(rot / 90.0) % 4


def _frames(container: av.container.InputContainer, info: VideoInfo, limits: VideoLimits,
            deadline: _Deadline) -> Iterator[av.VideoFrame]:
    stream = container.streams[info.video_index]
    try:
        for frame in container.decode(stream):
            deadline.check()
            yield frame
    except av.error.ExitError as exc:
        raise reject("video.timeout", f"decoding stalled for over {limits.read_timeout_s:.0f} s") from exc
    except av.error.FFmpegError as exc:
        raise reject("video.corrupt", f"the video stream cannot be decoded ({type(exc).__name__})") from exc


def anonymize_video(src: Path, dst: Path, params: Mapping[str, Any], detector: FaceDetector, *,
                    limits: VideoLimits | None = None, progress: Progress | None = None,
                    boxes_out: dict[int, list[Box]] | None = None) -> dict[str, Any]:
    """Writes the anonymized copy of ``src`` to ``dst``; returns facts for the audit record.

    Raises ``InputRejected`` (``video.*``) for inputs that can never succeed and
    ``ProcessingFailed`` when the detector or the encoder broke. ``dst`` may hold a
    partial file after an exception; the caller deletes it. ``boxes_out`` (benchmarks)
    receives the boxes obscured in each frame.
    """
    limits = limits or VideoLimits()
    started = time.monotonic()
    deadline = _Deadline(started + limits.max_seconds, limits.max_seconds)
    every = int(params.get("detect_every", 1))
    tparams = TrackParams(pad=max(int(params.get("pad_frames", 3)), every),
                          max_gap=max(int(params.get("max_gap", 8)), 2 * every))
    report = progress or (lambda *_: None)

    # -- pass 1: detect ---------------------------------------------------------------
    container = open_input(src, limits)
    try:
        info = probe(container, src, limits)
        total = info.expected_frames
        tracker = Tracker(tparams)
        n, k, size = 0, 0, None
        for frame in _frames(container, info, limits, deadline):
            if n == 0:
                k = quarter_turns(frame)
                size = (frame.width, frame.height)
            elif (frame.width, frame.height) != size:
                raise reject("video.unsupported", "the frame size changes within the video")
            if n % every == 0:
                tracker.add(n, detect_frame(detector, upright(frame, k)))
            n += 1
            check_budget(n, frame.width, frame.height, limits)
            report("detect", n, total)
    finally:
        container.close()
    if n == 0:
        raise reject("video.empty", "the video stream holds no frames")
    expected = info.expected_frames
    if expected and n < expected * (1.0 - limits.truncation_tolerance) - 1:
        raise reject("video.truncated", f"only {n} of the {expected} frames the header announces could be "
                                        "decoded: the file is cut short")
    covers = covering_boxes(tracker.tracks, n, tparams)
    if boxes_out is not None:
        boxes_out.update(covers)
    detect_s = time.monotonic() - started

    # -- pass 2: obscure, encode, copy audio ------------------------------------------------
    width, height = size if k % 2 == 0 else (size[1], size[0])
    settings = choose_encoder(info, dict(params))
    container = open_input(src, limits)
    writer: VideoWriter | None = None
    audio_in = 0
    try:
        streams = [container.streams[info.video_index], *(container.streams[i] for i in info.audio_indexes)]
        try:
            writer = VideoWriter(dst, info, container, settings, width, height)
        except (av.error.FFmpegError, ValueError) as exc:
            raise ProcessingFailed("video.encoder", f"the encoder could not start: {exc}", retryable=False) from exc
        i = 0
        try:
            for packet in container.demux(streams):
                deadline.check()
                if packet.stream.index != info.video_index:
                    if packet.size:
                        audio_in += 1
                        writer.copy_audio(packet)
                    continue
                for frame in packet.decode():
                    if i >= n:
                        raise ProcessingFailed("video.nondeterministic", "the second decode gave more frames "
                                               "than the first", retryable=False)
                    boxes = covers.get(i)
                    if not boxes and k == 0 and _plain_yuv(frame):
                        writer.write_frame(frame.to_ndarray(), frame.pts, fmt="yuv420p")
                    else:
                        rgb = upright(frame, k)
                        if boxes:
                            rgb = obscure_faces(rgb, _faces(boxes), mode=params["mode"], shape=params["shape"],
                                                margin=params["margin"], fill=tuple(params["fill"]))
                        writer.write_frame(rgb, frame.pts)
                    i += 1
                    report("encode", i, n)
            writer.close()
        except av.error.ExitError as exc:
            raise reject("video.timeout", f"decoding stalled for over {limits.read_timeout_s:.0f} s") from exc
        except av.error.FFmpegError as exc:
            raise ProcessingFailed("video.encode_failed", f"re-encoding failed ({type(exc).__name__}: "
                                   f"{str(exc)[:160]})", retryable=False) from exc
        if i != n:
            raise ProcessingFailed("video.nondeterministic", f"the second decode gave {i} frames, the first {n}",
                                   retryable=False)
    except FacewardenError:
        if writer is not None:
            writer.abort()
        raise
    finally:
        container.close()
    out_counts = verify_output(dst, n, audio_in, limits)

    frames_with_faces = sum(1 for b in covers.values() if b)
    return {
        "media": "video", **info.as_dict(), "rotation_quarter_turns": k, "width_out": width, "height_out": height,
        "frames": n, "frames_with_detections": tracker.frames_with_detections,
        "frames_with_faces": frames_with_faces, "tracks": len(tracker.tracks),
        "faces": sum(len(t.points) for t in tracker.tracks),
        "audio_packets_copied": out_counts["audio_packets"], "detect_every": every,
        "pad_frames": tparams.pad, "max_gap": tparams.max_gap,
        "encoder": settings.as_dict(), "mode": params["mode"], "shape": params["shape"],
        "margin": params["margin"], "min_score": params["min_score"], "detector": detector.name,
        "detect_s": round(detect_s, 2), "total_s": round(time.monotonic() - started, 2),
    }


def _plain_yuv(frame: av.VideoFrame) -> bool:
    return frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0


def _faces(boxes: list[Box]) -> list[Face]:
    return [Face(b[0], b[1], b[2], b[3], b[4]) for b in boxes]


def verify_output(path: Path, frames: int, audio_packets: int, limits: VideoLimits) -> dict[str, int]:
    """Counts the output's packets: exactly one video packet per input frame and every
    audio packet, or the job fails (nothing is published)."""
    try:
        with av.open(str(path), "r", timeout=(limits.read_timeout_s, limits.read_timeout_s)) as c:
            v = c.streams.video[0]
            nv = na = 0
            for p in c.demux():
                if not p.size:
                    continue
                if p.stream.index == v.index:
                    nv += 1
                elif p.stream.type == "audio":
                    na += 1
    except (av.error.FFmpegError, IndexError) as exc:
        raise ProcessingFailed("video.output_invalid", f"the written video cannot be read back: {exc}",
                               retryable=False) from exc
    if nv != frames or na != audio_packets:
        raise ProcessingFailed("video.output_mismatch", f"the output holds {nv} frames and {na} audio packets, "
                               f"the input {frames} and {audio_packets}", retryable=False)
    return {"video_packets": nv, "audio_packets": na}

