"""Eye and nose landmarks from dlib's 5-point shape predictor (CC0, from the registry).

ID photos need the eyes to straighten head roll and the nose to tell a turned head. The
FaceFinder's YuNet and CenterFace passes give them (``from_detection``); dlib's predictor,
which needs only the box and runs in ~1 ms, is the fallback for faces found otherwise.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facewarden.models.protocols import Face, ModelId
from facewarden.models.registry import model_file


@dataclass(frozen=True, slots=True)
class EyeNose:
    left_eye: tuple[float, float]  # the eye with the smaller x in the image
    right_eye: tuple[float, float]
    nose: tuple[float, float]


def from_detection(face: Face) -> EyeNose | None:
    """Eyes and nose from the detector's own pass (YuNet and CenterFace give them: eye
    centres, nose tip), or None when the face carries no such points (MediaPipe alone
    gives an eye-nose-mouth sketch too coarse to level a head)."""
    if len(face.landmarks) != 5 or not any(m in face.source.split("+") for m in ("yunet", "centerface")):
        return None
    a, b, nose = face.landmarks[0], face.landmarks[1], face.landmarks[2]
    left, right = (a, b) if a[0] <= b[0] else (b, a)
    return EyeNose(tuple(left), tuple(right), tuple(nose))


class FivePointLandmarks:
    name = "dlib-5pt"

    def __init__(self, models_dir: Path):
        import dlib

        path, self._model_id = model_file(models_dir, "dlib-shape-predictor-5")
        self._predictor = dlib.shape_predictor(str(path))
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def locate(self, rgb: np.ndarray, face: Face) -> EyeNose:
        import dlib

        rect = dlib.rectangle(int(face.x), int(face.y), int(face.x + face.w), int(face.y + face.h))
        with self._lock:
            shape = self._predictor(np.ascontiguousarray(rgb), rect)
        pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], dtype=np.float64)
        a, b = pts[0:2].mean(axis=0), pts[2:4].mean(axis=0)
        left, right = (a, b) if a[0] <= b[0] else (b, a)
        return EyeNose(tuple(left), tuple(right), tuple(pts[4]))
