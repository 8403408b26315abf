"""Small mask helpers for the fused segmenter: where the person is, and the threshold remap.

Both models see a fixed low resolution (u2netp 320x320, MediaPipe 256x256), so a person
that fills a fifth of a street photo gets only a few dozen model pixels across. Finding a
box around the person first (MediaPipe is ~6 ms, u2netp ~250 ms) and running the models on
that box gives them several times the resolution where it matters.
"""

from __future__ import annotations

import numpy as np

#: Fewer person pixels than this fraction of the frame: the box is not trusted (MediaPipe
#: missed the person, or saw a speck); fall back to the whole frame.
MIN_PERSON_FRACTION = 0.002


def person_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of ``mask``, grown on every side by ``margin`` times
    its longer side and clipped to the frame; the whole frame when the mask is (nearly) empty.

    The margin is relative to the longer side (not per axis) so that a thin standing person
    still gets room for out-stretched arms, which the coarse first mask often misses.
    """
    h, w = mask.shape[:2]
    ys, xs = np.nonzero(mask)
    if ys.size < MIN_PERSON_FRACTION * h * w:
        return 0, 0, w, h
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    grow = margin * max(x1 - x0, y1 - y0)
    return (max(0, int(x0 - grow)), max(0, int(y0 - grow)),
            min(w, int(x1 + grow)), min(h, int(y1 + grow)))


def remap_threshold(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Piecewise-linear remap [0, t] -> [0, 0.5], [t, 1] -> [0.5, 1], as float32 in [0, 1].

    Keeps the map soft (for feathered edges) while every caller can threshold at 0.5,
    whatever threshold the fusion was tuned to.
    """
    t = threshold
    out = np.where(prob < t, prob * (0.5 / t), 0.5 + (prob - t) * (0.5 / (1 - t)))
    return np.clip(out, 0.0, 1.0).astype(np.float32)
