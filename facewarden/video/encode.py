"""Writing the anonymized video: same container family, a fresh video stream, audio copied
packet for packet, and nothing else carried over.

What is deliberately not copied: container and stream metadata (GPS ``©xyz``/``location``,
make/model, creation times, titles, encoder tags of the camera), chapters (their names are
text a person wrote), subtitles and data streams (GPS tracks, telemetry), attachments and
cover art, and any frame side data (closed captions in SEI would otherwise be re-encoded
by libx264). Only each audio stream's ``language`` tag survives.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from facewarden.video.media import FAMILIES
from facewarden.video.probe import VideoInfo

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_KEEP_STREAM_TAGS = ("language",)


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    codec: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)
    threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"codec": self.codec, "pix_fmt": self.pix_fmt, "options": dict(self.options),
                "threads": self.threads}


def choose_encoder(info: VideoInfo, params: dict[str, Any]) -> EncoderSettings:
    """H.264 (libx264, CRF) unless the container or the input's codec family calls for
    another codec we can write: WebM only holds VP8/VP9/AV1 (we write VP9), and an HEVC
    input stays HEVC (libx265) in the containers that carry it."""
    threads = int(params.get("threads", 1))
    if info.family == "webm":
        return EncoderSettings("libvpx-vp9", "yuv420p", {
            "crf": str(params["vp9_crf"]), "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}, threads)
    if info.codec == "hevc" and info.family in ("mp4", "mov", "mkv"):
        return EncoderSettings("libx265", "yuv420p", {
            "crf": str(params["crf"]), "preset": params["preset"], "x265-params": "log-level=error"}, threads)
    options = {"crf": str(params["crf"]), "preset": params["preset"]}
    if info.family == "avi":  # AVI stores no presentation times: B-frames would come out misordered
        options["bf"] = "0"
    return EncoderSettings("libx264", "yuv420p", options, threads)


class VideoWriter:
    """One output file. ``write_frame`` takes upright RGB frames with their input pts;
    ``copy_audio`` takes the input's audio packets unchanged."""

    def __init__(self, path: Path, info: VideoInfo, source: av.container.InputContainer,
                 settings: EncoderSettings, width: int, height: int):
        muxer = FAMILIES[info.family][0]
        options = {"movflags": "+faststart"} if info.family in ("mp4", "mov") else {}
        self.out = av.open(str(path), "w", format=muxer, options=options)
        self.settings = settings
        rate = info.rate or Fraction(25)
        self.video = self.out.add_stream(settings.codec, rate=rate, options=dict(settings.options))
        self.video.width, self.video.height = width, height
        self.video.pix_fmt = settings.pix_fmt
        self.video.time_base = info.time_base
        self.video.codec_context.time_base = info.time_base
        self.video.codec_context.thread_count = settings.threads
        if settings.codec == "libx265" and info.family in ("mp4", "mov"):
            self.video.codec_tag = "hvc1"
        self.audio: dict[int, Any] = {}
        for idx in info.audio_indexes:
            src = source.streams[idx]
            dst = self.out.add_stream_from_template(src)
            tags = {k: v for k, v in src.metadata.items() if k in _KEEP_STREAM_TAGS}
            dst.metadata.clear()
            dst.metadata.update(tags)
            self.audio[idx] = dst
        self.out.metadata.clear()
        self._last_pts: int | None = None
        self.frames = 0
        self.audio_packets = 0

    def write_frame(self, rgb: np.ndarray, pts: int | None, fmt: str = "rgb24") -> None:
        """``fmt`` "yuv420p" takes a decoded frame's own planes (frames with nothing to
        obscure skip two colour conversions); a fresh frame either way, so no side data
        of the input (captions, SEI) reaches the encoder."""
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + 1
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # muxers refuse non-increasing timestamps
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(rgb, format=fmt)
        frame.pts = pts
        frame.time_base = self.video.time_base
        for packet in self.video.encode(frame):
            self.out.mux(packet)
        self.frames += 1

    def copy_audio(self, packet: av.Packet) -> None:
        dst = self.audio.get(packet.stream.index)
        if dst is None or packet.size == 0:
            return
        packet.stream = dst
        self.out.mux(packet)
        self.audio_packets += 1

    def close(self) -> None:
        for packet in self.video.encode(None):
            self.out.mux(packet)
        self.out.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the partial file is deleted by the caller anyway
            self.out.close()
