"""Segmenter factory, including the fused default chosen by ``bench/segmentation_iou.py``.

On ``segmentation-dev`` (97 photos, remove.bg pseudo ground truth) u2netp (rembg) and the
MediaPipe selfie model each score about 0.87-0.88 mean IoU, but they fail differently:
u2netp keeps salient background objects (a phone booth, a pram), MediaPipe misses thin
parts and cuts soft hair. Averaging their probability maps and thresholding low keeps what
either is fairly sure of only when the other does not strongly disagree.

Both models work at a fixed low resolution (320 and 256 px square), so the worst photos
were street scenes where the person covers a few percent of the frame. The default
therefore runs MediaPipe on the whole frame first (~6 ms), crops to the person's box plus
a margin, and runs both models on the crop. Measured on one core (mean / p10 / min IoU):

    u2netp, whole frame          0.872 / 0.625 / 0.22   ~260 ms
    MediaPipe, whole frame       0.876 / 0.724 / 0.00     ~7 ms
    fused, whole frame (before)  0.904 / 0.812 / 0.25   ~265 ms
    fused on the person crop     0.921 / 0.836 / 0.57   ~272 ms
      even half (tuning) / odd half (held out): 0.927 / 0.850 and 0.916 / 0.832

FUSED_THRESHOLD and CROP_MARGIN were chosen on the even half of the sorted file list.
Tried and dropped (no gain or worse on the dev set): a guided filter on the fused map
(grey or colour guide, r 2-16: -0.003 to -0.03 mean IoU, it blurs thin limbs the models
already got right), horizontal-flip averaging (+0.001, within noise; for u2netp it
doubles the cost), upsampling logits instead of probabilities (no change), unequal
weights, and hole filling (the masks have real holes, between arm and body).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facewarden.models.backends import BackendRegistry
from facewarden.models.mask_refine import person_box, remap_threshold
from facewarden.models.protocols import ModelId, Segmenter

#: Segmenter backends: each registers itself in its own file (``SEGMENTERS.register``).
SEGMENTERS = BackendRegistry("segmenter", ("facewarden.models.segmenters", "facewarden.models.segment_mediapipe"))
NAMES = ("fused", "rembg", "mediapipe")
#: Threshold on the averaged probability, chosen on the even half of segmentation-dev.
FUSED_THRESHOLD = 0.30
#: Margin around MediaPipe's person box, times the box's longer side (even half of the dev set).
CROP_MARGIN = 0.4


class FusedSegmenter:
    """Mean of u2netp and MediaPipe probabilities on a crop around the person.

    A first, cheap MediaPipe pass on the whole frame finds the person; both models then run
    on that box (grown by CROP_MARGIN), and everything outside it is background. The output
    stays soft (for feathered edges) but is rescaled so that FUSED_THRESHOLD lands on 0.5,
    so callers can threshold every backend at 0.5.
    """

    name = "fused-u2netp-mediapipe"

    def __init__(self, models_dir: Path):
        from facewarden.models.segment_mediapipe import MediaPipeSegmenter
        from facewarden.models.segment_rembg import RembgSegmenter

        self._mediapipe = MediaPipeSegmenter(models_dir)
        self._parts: list[Segmenter] = [RembgSegmenter(models_dir), self._mediapipe]

    def model_ids(self) -> list[ModelId]:
        return [m for p in self._parts for m in p.model_ids()]

    @staticmethod
    def fuse(maps: list[np.ndarray]) -> np.ndarray:
        return remap_threshold(np.mean(maps, axis=0), FUSED_THRESHOLD)

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        coarse = self._mediapipe.segment(rgb)
        x0, y0, x1, y1 = person_box(coarse > 0.5, CROP_MARGIN)
        if (x0, y0, x1, y1) == (0, 0, w, h):
            # The box is the frame: MediaPipe's answer on it is the one we already have.
            return self.fuse([self._parts[0].segment(rgb), coarse])
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        out = np.zeros((h, w), np.float32)
        out[y0:y1, x0:x1] = self.fuse([p.segment(crop) for p in self._parts])
        return out


@SEGMENTERS.register("fused")
def _build_fused(models_dir: Path) -> Segmenter:
    return FusedSegmenter(models_dir)


# rembg's backend file (segment_rembg.py) is being replaced; until it registers itself,
# its builder is declared here.
@SEGMENTERS.register("rembg")
def _build_rembg(models_dir: Path) -> Segmenter:
    from facewarden.models.segment_rembg import RembgSegmenter

    return RembgSegmenter(models_dir)


def make_segmenter(name: str, models_dir: Path) -> Segmenter:
    """Builds a segmenter by its short name; load it once and keep it (models are heavy).

    Raises ``UnknownBackend`` (listing the known names) for a name nobody registered."""
    return SEGMENTERS.builder(name)(models_dir)
