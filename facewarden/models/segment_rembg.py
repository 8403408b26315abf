"""Person segmentation with the small U^2-Net (``u2netp``) run directly on onnxruntime.

This used to go through the ``rembg`` package, which only opened an onnxruntime session for
us but pulled numba, llvmlite, scipy, scikit-image and pymatting into the runtime (~400 MB,
and a ~60 s numba compile on the first import of a fresh install). The maths below is
rembg 2.0.86's ``u2net_custom`` session, step by step: LANCZOS resize to 320x320, divide by
the maximum, ImageNet mean/std in float64, the first output's first channel min-max
scaled, rounded down to uint8, LANCZOS resize back. Same steps, same masks:
``tests/test_segment_u2netp.py`` compares with masks rembg computed before it was dropped.
The file is the one rembg would have used (``u2netp``, pinned in the registry).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from facewarden.errors import ProcessingFailed
from facewarden.models.protocols import ModelId
from facewarden.models.quiet import native_output
from facewarden.models.registry import model_file

#: u2netp's input side and rembg's ImageNet normalisation constants.
MODEL_SIDE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> the (1, 3, 320, 320) float32 tensor rembg feeds u2netp."""
    small = np.asarray(Image.fromarray(rgb, "RGB").resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.LANCZOS))
    scaled = small / max(np.max(small), 1e-6)  # float64, as rembg computes it
    norm = (scaled - np.array(MEAN)) / np.array(STD)
    return np.ascontiguousarray(norm.transpose(2, 0, 1)[None].astype(np.float32))


def postprocess(output: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """u2netp's first output -> uint8 (H, W) mask at ``size`` (width, height), as rembg does."""
    pred = output[:, 0, :, :]
    lo, hi = np.min(pred), np.max(pred)
    pred = np.squeeze((pred - lo) / (hi - lo))
    mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
    return np.asarray(mask.resize(size, Image.Resampling.LANCZOS))


class RembgSegmenter:
    """u2netp with rembg's pre/post-processing: soft edges and good hair, but sometimes keeps
    salient background objects. (The name stays: ``segmenter=rembg`` is a public parameter.)"""

    name = "rembg-u2netp"

    def __init__(self, models_dir: Path, *, threads: int = 1):
        path, self._model_id = model_file(models_dir, "u2netp")
        with native_output("onnxruntime-u2netp"):
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # One core per worker process: workers scale by processes, not threads.
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            try:
                self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
                raise ProcessingFailed("segmenter.load", f"could not load u2netp: {exc}", retryable=False) from exc
        self._input = self._session.get_inputs()[0].name
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def mask_u8(self, rgb: np.ndarray) -> np.ndarray:
        """rembg's mask exactly: uint8, the input's size."""
        h, w = rgb.shape[:2]
        feed = {self._input: preprocess(np.ascontiguousarray(rgb, dtype=np.uint8))}
        try:
            with self._lock:
                output = self._session.run(None, feed)[0]
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("segmenter.error", f"u2netp failed: {type(exc).__name__}") from exc
        return postprocess(output, (w, h))

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        return self.mask_u8(rgb).astype(np.float32) / 255.0
