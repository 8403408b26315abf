"""The one place video asks for faces in a frame.

Today it calls the photo detector the anonymize handler uses (``make_detector``); when
the shared face finder lands this is the single function to switch over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facewarden.errors import FacewardenError, ProcessingFailed
from facewarden.models.detectors import make_detector
from facewarden.models.protocols import Face, FaceDetector
from facewarden.video.tracks import Box


def frame_detector(models_dir: Path, params: Mapping[str, Any]) -> FaceDetector:
    """The detector for these (validated anonymize) params, cached per process."""
    try:
        return make_detector(params["detector"], models_dir, min_score=params["min_score"])
    except FacewardenError:
        raise
    except Exception as exc:  # noqa: BLE001 - no detector means no anonymization
        raise ProcessingFailed("detector.unavailable",
                               f"detector {params['detector']!r} could not be built: {exc}") from exc


def detect_frame(detector: FaceDetector, rgb: np.ndarray) -> list[Box]:
    """Faces in one upright RGB frame as boxes; raises (fail closed) when it could not look."""
    try:
        faces = detector.detect(rgb)
    except FacewardenError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything the detector throws
        raise ProcessingFailed("detector.error", f"face detection failed: {type(exc).__name__}") from exc
    if not isinstance(faces, list) or not all(isinstance(f, Face) for f in faces):
        raise ProcessingFailed("detector.bad_output", "the detector returned something other than faces")
    boxes: list[Box] = []
    for f in faces:
        if not all(math.isfinite(v) for v in (f.x, f.y, f.w, f.h)):
            raise ProcessingFailed("detector.bad_output", "the detector returned a non-finite box",
                                   retryable=False)
        boxes.append((float(f.x), float(f.y), float(f.w), float(f.h), float(f.score)))
    return boxes
