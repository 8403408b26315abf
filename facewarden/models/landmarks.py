"""Eye and nose landmarks from dlib's 5-point shape predictor (CC0, from the pinned registry).

Detector landmarks (YuNet's five points) are regressed from a ~10-px anchor and wobble by a
few pixels; the ID-photo geometry (roll, yaw, scale) is driven by the eyes, so a dedicated
regression-tree predictor started from the detector's box gives steadier points for ~1 ms.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.protocols import Face, ModelId
from facewarden.models.registry import model_file


@dataclass(frozen=True, slots=True)
class EyeLandmarks:
    """Centres of the two eyes (image left and right) and the base of the nose, in pixels."""

    left_eye: tuple[float, float]  # the eye with the smaller x
    right_eye: tuple[float, float]
    nose: tuple[float, float]

    @property
    def eye_mid(self) -> tuple[float, float]:
        return ((self.left_eye[0] + self.right_eye[0]) / 2, (self.left_eye[1] + self.right_eye[1]) / 2)

    @property
    def eye_distance(self) -> float:
        return float(np.hypot(self.right_eye[0] - self.left_eye[0], self.right_eye[1] - self.left_eye[1]))

    @property
    def roll_deg(self) -> float:
        """Positive when the image-right eye sits lower (a clockwise tilt in the picture)."""
        return float(np.degrees(np.arctan2(self.right_eye[1] - self.left_eye[1],
                                           self.right_eye[0] - self.left_eye[0])))


class ShapePredictor5:
    name = "dlib-shape-predictor-5"

    def __init__(self, models_dir: Path):
        path, self._model_id = model_file(models_dir, "dlib-shape-predictor-5")
        try:
            import dlib

            self._dlib = dlib
            self._predictor = dlib.shape_predictor(str(path))
        except Exception as exc:  # noqa: BLE001 - dlib raises RuntimeError or its own types
            raise ProcessingFailed("landmarks.load", f"could not load the 5-point predictor: {exc}",
                                   retryable=False) from exc
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def eyes(self, rgb: np.ndarray, face: Face) -> EyeLandmarks:
        rect = self._dlib.rectangle(round(face.x), round(face.y),
                                    round(face.x + face.w), round(face.y + face.h))
        try:
            with self._lock:
                shape = self._predictor(np.ascontiguousarray(rgb), rect)
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("landmarks.error", f"landmark prediction failed: {type(exc).__name__}") from exc
        pts = [(float(shape.part(i).x), float(shape.part(i).y)) for i in range(5)]
        # dlib's 5 points: 0-1 corners of one eye, 2-3 of the other, 4 below the nose.
        a = ((pts[0][0] + pts[1][0]) / 2, (pts[0][1] + pts[1][1]) / 2)
        b = ((pts[2][0] + pts[3][0]) / 2, (pts[2][1] + pts[3][1]) / 2)
        left, right = (a, b) if a[0] <= b[0] else (b, a)
        return EyeLandmarks(left_eye=left, right_eye=right, nose=pts[4])


_CACHE: dict[str, ShapePredictor5] = {}
_LOCK = threading.Lock()


def shape_predictor(models_dir: Path) -> ShapePredictor5:
    """One predictor per process and models directory (loading parses a 5-MB file)."""
    key = str(Path(models_dir).resolve())
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = ShapePredictor5(Path(models_dir))
        return _CACHE[key]
