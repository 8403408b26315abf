"""Segmenter factory, including the fused default chosen by ``bench/segmentation_iou.py``.

On ``segmentation-dev`` u2netp (rembg) and the MediaPipe selfie model each score about
0.875-0.88 mean IoU, but they fail differently: u2netp keeps salient background objects
(a phone booth, a pram), MediaPipe misses thin parts and cuts soft hair. Averaging their
probability maps and thresholding low (0.35) keeps what either is fairly sure of only when
the other does not strongly disagree, which lifts both the mean and the 10th percentile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facewarden.errors import InputRejected
from facewarden.models.protocols import ModelId, Segmenter

NAMES = ("fused", "rembg", "mediapipe")
#: Threshold on the averaged probability that best matched the dev masks (bench/).
FUSED_THRESHOLD = 0.35


class FusedSegmenter:
    """Mean of u2netp and MediaPipe probabilities, re-mapped so 0.5 means 'person'.

    The output stays soft (for feathered edges) but is rescaled so that the tuned
    threshold FUSED_THRESHOLD lands on 0.5, so callers can threshold every backend at 0.5.
    """

    name = "fused-u2netp-mediapipe"

    def __init__(self, models_dir: Path):
        from facewarden.models.segment_mediapipe import MediaPipeSegmenter
        from facewarden.models.segment_rembg import RembgSegmenter

        self._parts: list[Segmenter] = [RembgSegmenter(models_dir), MediaPipeSegmenter(models_dir)]

    def model_ids(self) -> list[ModelId]:
        return [m for p in self._parts for m in p.model_ids()]

    def probabilities(self, rgb: np.ndarray) -> list[np.ndarray]:
        return [p.segment(rgb) for p in self._parts]

    @staticmethod
    def fuse(maps: list[np.ndarray]) -> np.ndarray:
        avg = np.mean(maps, axis=0)
        # Piecewise-linear remap: [0, T] -> [0, 0.5], [T, 1] -> [0.5, 1].
        t = FUSED_THRESHOLD
        out = np.where(avg < t, avg * (0.5 / t), 0.5 + (avg - t) * (0.5 / (1 - t)))
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        return self.fuse(self.probabilities(rgb))


def make_segmenter(name: str, models_dir: Path) -> Segmenter:
    """Builds a segmenter by its short name; load it once and keep it (models are heavy)."""
    if name == "fused":
        return FusedSegmenter(models_dir)
    if name == "rembg":
        from facewarden.models.segment_rembg import RembgSegmenter

        return RembgSegmenter(models_dir)
    if name == "mediapipe":
        from facewarden.models.segment_mediapipe import MediaPipeSegmenter

        return MediaPipeSegmenter(models_dir)
    raise InputRejected("params.invalid", f"unknown segmenter {name!r}; use one of {', '.join(NAMES)}")
