"""Person segmenter factory, and the fused default chosen with ``bench/segmentation_iou.py``.

Names ``make_segmenter`` knows:

- ``"rembg"``: rembg + u2netp (soft edges, good hair; sometimes keeps background objects or
  drops a limb). ~240 ms on one core.
- ``"mediapipe"``: MediaPipe selfie segmenter (~11 ms; robust about which pixels are the
  person but misses people seen from behind or far away).
- ``"fused"`` (the default): both, plus a second MediaPipe pass zoomed on the person found by
  the first two. The errors of the two models are largely independent (each one alone
  measures ~0.87 mean IoU on segmentation-dev), so the mean of their probabilities with a
  threshold below 0.5 recovers what either one misses; the zoomed pass gives the 256-px
  selfie model more pixels on the person. See ``FUSED_DEFAULTS`` and the bench docstring.

Segmenters are cached per process: models load once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.protocols import ModelId, Segmenter

NAMES = ("fused", "rembg", "mediapipe")
DEFAULT = "fused"

#: Picked on segmentation-dev (97 images): threshold 0.35 on the mean of three maps beat
#: 0.5 (too strict: a pixel one model misses is lost) and 0.25 (halos on clutter).
FUSED_DEFAULTS: dict[str, Any] = {"threshold": 0.35, "zoom": True, "zoom_pad": 0.15}


def calibrate(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Piecewise-linear remap so that ``threshold`` lands on 0.5: callers can keep using
    ``mask > 0.5`` and soft values stay monotonic for alpha blending."""
    t = float(threshold)
    low = prob * (0.5 / t)
    high = 0.5 + (prob - t) * (0.5 / (1.0 - t))
    return np.clip(np.where(prob < t, low, high), 0.0, 1.0).astype(np.float32)


class FusedSegmenter:
    """Mean of rembg/u2netp and MediaPipe (full frame + zoomed on the person)."""

    name = "fused"

    def __init__(self, rembg: Segmenter, mediapipe: Segmenter, *, threshold: float = 0.35,
                 zoom: bool = True, zoom_pad: float = 0.15):
        if not 0.05 <= threshold <= 0.95:
            raise ValueError("threshold must be within [0.05, 0.95]")
        self.rembg = rembg
        self.mediapipe = mediapipe
        self.threshold = threshold
        self.zoom = zoom
        self.zoom_pad = zoom_pad

    def model_ids(self) -> list[ModelId]:
        return [*self.rembg.model_ids(), *self.mediapipe.model_ids()]

    def _zoomed(self, rgb: np.ndarray, first: np.ndarray) -> np.ndarray | None:
        ys, xs = np.nonzero(first > self.threshold)
        if ys.size == 0:
            return None
        h, w = first.shape
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        py, px = int((y1 - y0) * self.zoom_pad), int((x1 - x0) * self.zoom_pad)
        y0, y1, x0, x1 = max(0, y0 - py), min(h, y1 + py), max(0, x0 - px), min(w, x1 + px)
        if (y1 - y0) < 16 or (x1 - x0) < 16:
            return None
        out = np.zeros((h, w), np.float32)
        out[y0:y1, x0:x1] = self.mediapipe.segment(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        return out

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        r = self.rembg.segment(rgb)
        m = self.mediapipe.segment(rgb)
        maps = [r, m]
        if self.zoom:
            z = self._zoomed(rgb, (r + m) / 2.0)
            maps.append(z if z is not None else m)
        prob = np.mean(maps, axis=0)
        return calibrate(prob, self.threshold)


_CACHE: dict[tuple, Segmenter] = {}
_LOCK = threading.RLock()


def _build(name: str, models_dir: Path, options: dict[str, Any]) -> Segmenter:
    if name == "rembg":
        from facewarden.models.segment_rembg import RembgSegmenter

        return RembgSegmenter(models_dir, **options)
    if name == "mediapipe":
        from facewarden.models.segment_mediapipe import MediaPipeSegmenter

        return MediaPipeSegmenter(models_dir, **options)
    if name == "fused":
        cfg = {**FUSED_DEFAULTS, **options}
        unknown = set(cfg) - set(FUSED_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown option(s) for fused: {', '.join(sorted(unknown))}")
        return FusedSegmenter(make_segmenter("rembg", models_dir), make_segmenter("mediapipe", models_dir), **cfg)
    raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(NAMES)}")


def make_segmenter(name: str, models_dir: Path, **options: Any) -> Segmenter:
    """A segmenter by name, built once per process per (name, models_dir, options).

    Raises ``ValueError`` for an unknown name or option, ``ModelError`` when a model file is
    missing or corrupt, ``ProcessingFailed`` when a runtime cannot start.
    """
    key = (name, str(Path(models_dir).resolve()), tuple(sorted(options.items())))
    with _LOCK:
        seg = _CACHE.get(key)
        if seg is None:
            try:
                seg = _build(name, Path(models_dir), dict(options))
            except TypeError as exc:
                raise ValueError(f"bad option for segmenter {name!r}: {exc}") from exc
            except (ImportError, RuntimeError) as exc:
                raise ProcessingFailed("segmenter.unavailable",
                                       f"segmenter {name!r} could not start: {type(exc).__name__}: {exc}") from exc
            _CACHE[key] = seg
        return seg
