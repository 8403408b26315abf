"""Video handlers: what a route's handler name means for a video input.

A route says ``handler = "anonymize"`` for photos and videos alike; for a video the worker
asks this module (``get``) instead of the photo registry. Params are the photo anonymize
params (detector, mode, shape, margin, min_score, fill; ``jpeg_quality`` is accepted and
ignored so one route can serve both media) plus the video ones below. A handler name with
no video meaning (idphoto, enroll) is refused with ``video.unsupported_handler``.

Unlike photo handlers, the video handler works on files (an input path and an output
path, both local temp files owned by the worker): a video does not fit in memory. It
still does no store, queue or config I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facewarden.errors import InputRejected
from facewarden.handlers.anonymize import VIDEO_ONLY_PARAMS, AnonymizeHandler
from facewarden.handlers.base import HandlerContext
from facewarden.models.protocols import ModelId
from facewarden.video.encode import X264_PRESETS
from facewarden.video.faces import frame_detector
from facewarden.video.passes import Progress, anonymize_video
from facewarden.video.probe import VideoLimits

#: Video params: name -> (default, lo, hi) for integers; preset is a name.
VIDEO_INT_PARAMS: dict[str, tuple[int, int, int]] = {
    "crf": (20, 0, 51),  # libx264/libx265 constant quality; lower = better
    "vp9_crf": (32, 0, 63),  # libvpx-vp9 constant quality (WebM)
    "detect_every": (1, 1, 10),  # detect on every k-th frame; tracks fill the rest
    "pad_frames": (3, 0, 60),  # frames obscured before/after each track
    "max_gap": (8, 0, 120),  # frames a track may go undetected and continue
    "threads": (1, 1, 16),  # encoder threads (one worker per core by default)
}
DEFAULT_PRESET = "veryfast"


@dataclass(slots=True)
class VideoResult:
    facts: dict[str, Any]
    models: list[ModelId] = field(default_factory=list)


class VideoAnonymizeHandler:
    name = "anonymize"

    def __init__(self) -> None:
        self._photo = AnonymizeHandler()

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        video = {k: params.pop(k) for k in VIDEO_ONLY_PARAMS if k in params}
        params.pop("jpeg_quality", None)
        out = self._photo.validate_params(params)
        out.pop("jpeg_quality", None)
        for key, (default, lo, hi) in VIDEO_INT_PARAMS.items():
            v = video.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputRejected("params.invalid", f"{key} must be an integer within [{lo}, {hi}]")
            out[key] = v
        preset = video.get("preset", DEFAULT_PRESET)
        if not isinstance(preset, str) or preset not in X264_PRESETS:
            raise InputRejected("params.invalid", f"preset must be one of {', '.join(X264_PRESETS)}")
        out["preset"] = preset
        return out

    def warm_up(self, ctx: HandlerContext, params: Mapping[str, Any]) -> None:
        p = self.validate_params(params)
        frame_detector(ctx.models_dir, p).detect(np.full((256, 256, 3), 127, np.uint8))

    def run_file(self, src: Path, dst: Path, params: Mapping[str, Any], ctx: HandlerContext, *,
                 limits: VideoLimits | None = None, progress: Progress | None = None) -> VideoResult:
        p = self.validate_params(params)
        det = frame_detector(ctx.models_dir, p)
        facts = anonymize_video(src, dst, p, det, limits=limits, progress=progress)
        return VideoResult(facts=facts, models=det.model_ids())


_HANDLERS: dict[str, Callable[[], VideoAnonymizeHandler]] = {"anonymize": VideoAnonymizeHandler}
_INSTANCES: dict[str, VideoAnonymizeHandler] = {}


def get(name: str) -> VideoAnonymizeHandler:
    if name not in _HANDLERS:
        raise InputRejected("video.unsupported_handler",
                            f"the {name!r} handler does not take videos; videos can be sent to: "
                            f"{', '.join(sorted(_HANDLERS))}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _HANDLERS[name]()
    return _INSTANCES[name]


def handler_for(name: str, media: str) -> Any:
    """The handler that validates params for this media: the video handler for "video",
    the photo registry otherwise (routes, job messages and warm-up ask this)."""
    if media == "video":
        return get(name)
    from facewarden.handlers import base

    return base.get(name)
