"""Opening a video and deciding, from its headers alone, whether we take it.

Everything a hostile or broken file can do to a worker is refused here by name before a
frame is decoded: no video stream (audio-only), zero-size or huge frames, too long, too
many pixels in total, a container we do not write.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from facewarden.errors import InputRejected
from facewarden.video.media import sniff


@dataclass(frozen=True, slots=True)
class VideoLimits:
    """Per-job budget; every limit has its own rejection code."""

    #: Longest accepted duration (``video.too_long``).
    max_duration_s: float = 3600.0
    #: Largest frame (``video.too_large``); 4096x2304 (DCI 4K and UHD fit).
    max_frame_pixels: int = 4096 * 2304
    #: Most frames (``video.too_large``).
    max_frames: int = 250_000
    #: Total decoded pixels, frames x frame size (``video.too_large``): 1 h of 1080p at 30 fps.
    max_total_pixels: int = 1920 * 1080 * 30 * 3600
    #: A demuxer/decoder read that makes no progress for this long is aborted (``video.timeout``).
    read_timeout_s: float = 30.0
    #: Wall-clock budget for the whole job (``video.timeout``).
    max_seconds: float = 6 * 3600.0
    #: Decoded frames may fall short of the header's count by this share before the file
    #: is called truncated (containers round their frame counts and durations).
    truncation_tolerance: float = 0.02


@dataclass(slots=True)
class VideoInfo:
    family: str  # mp4 | mov | mkv | webm | avi
    format_name: str
    video_index: int
    codec: str
    width: int  # coded (before rotation)
    height: int
    rate: Fraction | None
    time_base: Fraction
    #: Frames the header promises (0 when the container does not say); see ``expected_frames``.
    frames_declared: int
    duration_s: float
    audio_indexes: list[int] = field(default_factory=list)
    audio_codecs: list[str] = field(default_factory=list)
    #: Streams that are not carried over (subtitles, data such as GPS tracks, cover art,
    #: further video streams), by type.
    dropped: list[str] = field(default_factory=list)

    @property
    def expected_frames(self) -> int:
        if self.frames_declared > 0:
            return self.frames_declared
        if self.rate and self.duration_s > 0:
            return max(1, round(self.duration_s * float(self.rate)))
        return 0

    def as_dict(self) -> dict[str, Any]:
        return {"container": self.family, "codec": self.codec, "width": self.width, "height": self.height,
                "fps": round(float(self.rate), 3) if self.rate else None,
                "duration_s": round(self.duration_s, 3), "frames_declared": self.frames_declared,
                "audio_streams": len(self.audio_indexes), "audio_codecs": self.audio_codecs,
                "dropped_streams": self.dropped}


def reject(code: str, message: str) -> InputRejected:
    return InputRejected(code, message)


def open_input(path: Path, limits: VideoLimits) -> av.container.InputContainer:
    """Opens a local file with a read timeout, mapping failures to reason codes."""
    if os.path.getsize(path) == 0:
        raise reject("video.empty", "the video file is empty (0 bytes)")
    try:
        return av.open(str(path), "r", timeout=(limits.read_timeout_s, limits.read_timeout_s))
    except av.error.ExitError as exc:
        raise reject("video.timeout", f"opening the video stalled for over {limits.read_timeout_s:.0f} s") from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if _iso_cut_short(path):  # an MP4/MOV whose last box (often the moov index) never fully arrived
            raise reject("video.truncated", "the MP4/MOV file is cut short (a box runs past the end of the "
                                            "file, or the moov index is missing)") from exc
        raise reject("video.corrupt", f"the file cannot be opened as a video ({_short(exc)})") from exc


def probe(container: av.container.InputContainer, path: Path, limits: VideoLimits) -> VideoInfo:
    with open(path, "rb") as fh:
        family = sniff(fh.read(64))
    if family is None:
        raise reject("video.unsupported_container",
                     f"the container {container.format.name!r} is not one of mp4, mov, mkv, webm, avi")
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    audios = list(container.streams.audio)
    if not videos:
        if audios:
            raise reject("video.no_video_stream", "the file holds audio only, no video stream")
        raise reject("video.no_video_stream", "the file holds no video stream")
    v = videos[0]
    cc = v.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise reject("video.corrupt", "the video stream has no frame size")
    if width * height > limits.max_frame_pixels:
        raise reject("video.too_large", f"frames of {width}x{height} exceed the limit of "
                                        f"{limits.max_frame_pixels} pixels per frame")
    rate = v.average_rate or v.guessed_rate or v.base_rate
    rate = Fraction(rate) if rate and float(rate) > 0 else None
    tb = Fraction(v.time_base) if v.time_base else Fraction(1, 1000)
    duration = 0.0
    if v.duration:
        duration = float(v.duration * tb)
    elif container.duration:
        duration = container.duration / av.time_base
    if not math.isfinite(duration) or duration < 0:
        raise reject("video.corrupt", "the video states an impossible duration")
    if duration > limits.max_duration_s:
        raise reject("video.too_long", f"the video lasts {duration:.0f} s, above the limit of "
                                       f"{limits.max_duration_s:.0f} s")
    info = VideoInfo(family=family, format_name=container.format.name, video_index=v.index,
                     codec=cc.name, width=width, height=height, rate=rate, time_base=tb,
                     frames_declared=int(v.frames or 0), duration_s=duration,
                     audio_indexes=[a.index for a in audios], audio_codecs=[a.codec_context.name for a in audios])
    check_budget(info.expected_frames, width, height, limits)
    for s in container.streams:
        if s.index != v.index and s.index not in info.audio_indexes:
            info.dropped.append(s.type if not _is_cover_art(s) else "cover_art")
    return info


def check_budget(frames: int, width: int, height: int, limits: VideoLimits) -> None:
    """Raised up front from the header, and again while decoding (headers can lie)."""
    if frames > limits.max_frames:
        raise reject("video.too_large", f"the video has {frames} frames, above the limit of {limits.max_frames}")
    if frames * width * height > limits.max_total_pixels:
        raise reject("video.too_large", f"{frames} frames of {width}x{height} exceed the per-job budget of "
                                        f"{limits.max_total_pixels} pixels")


_ISO_TOP_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pdin", b"moof", b"mfra",
                  b"meta", b"sidx", b"styp", b"udta"}


def _iso_cut_short(path: Path) -> bool:
    """For ISO-BMFF files: a top-level box that runs past the end of the file, or no moov box."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if sniff(fh.read(64)) not in ("mp4", "mov"):
            return False
        pos, seen_moov = 0, False
        while pos + 8 <= size:
            fh.seek(pos)
            box_size, kind = struct.unpack(">I4s", fh.read(8))
            if box_size == 1:
                raw = fh.read(8)
                if len(raw) < 8:
                    return True
                box_size = struct.unpack(">Q", raw)[0]
            elif box_size == 0:
                box_size = size - pos
            if box_size < 8 or kind not in _ISO_TOP_BOXES:
                return False  # not a box structure we can judge: leave it "corrupt"
            seen_moov |= kind == b"moov"
            if pos + box_size > size:
                return True
            pos += box_size
        return not seen_moov


def _is_cover_art(stream: Any) -> bool:
    disp = getattr(stream, "disposition", None)
    try:
        return bool(disp is not None and disp & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):
        return False


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:160]}"
