"""Person segmentation with rembg on the small U^2-Net (``u2netp``) from the pinned registry.

rembg's own model download fails offline, so we use its ``u2net_custom`` session on the
verified registry file. Two rembg quirks are handled here once: the model must sit inside
``U2NET_HOME`` (so we point it at the registry folder), and rembg's first import compiles
numba code (~60 s cold) unless ``NUMBA_CACHE_DIR`` is persistent (we put it under the
models directory, so only the very first process on a host pays).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.protocols import ModelId
from facewarden.models.registry import model_file

#: u2netp's input size (what rembg feeds it), and rembg's normalisation constants.
_MODEL_SIDE = 320
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _import_rembg(models_dir: Path, model_path: Path):
    # Environment is the only way to configure these two library-level knobs; set them
    # before the first import and never override what an operator chose.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(models_dir).resolve() / ".numba-cache"))
    os.environ.setdefault("U2NET_HOME", str(model_path.parent))
    import rembg

    return rembg


class RembgSegmenter:
    """rembg + u2netp: soft edges and good hair, but sometimes keeps background objects."""

    name = "rembg-u2netp"

    def __init__(self, models_dir: Path, *, threads: int = 1):
        path, self._model_id = model_file(models_dir, "u2netp")
        rembg = _import_rembg(models_dir, path)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One core per worker process: workers scale by processes, not threads.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        home = Path(os.environ.get("U2NET_HOME", str(path.parent))).resolve()
        if home not in path.resolve().parents:
            raise ProcessingFailed(
                "segmenter.config",
                f"U2NET_HOME={home} does not contain {path}; unset it or point it at {path.parent}",
                retryable=False,
            )
        try:
            self._session = rembg.new_session("u2net_custom", sess_opts=opts, model_path=str(path),
                                              providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
            raise ProcessingFailed("segmenter.load", f"could not load u2netp: {exc}", retryable=False) from exc
        self._input = self._session.inner_session.get_inputs()[0].name
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        # rembg's own ``predict`` does the same maths through PIL (LANCZOS both ways, uint8
        # round trip); doing it with cv2 on float keeps the soft values and saves ~30 ms.
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (_MODEL_SIDE, _MODEL_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
        small /= max(float(small.max()), 1e-6)
        small = (small - _MEAN) / _STD
        feed = {self._input: np.ascontiguousarray(small.transpose(2, 0, 1)[None])}
        try:
            with self._lock:
                pred = self._session.inner_session.run(None, feed)[0][0, 0]
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("segmenter.error", f"u2netp failed: {type(exc).__name__}") from exc
        lo, hi = float(pred.min()), float(pred.max())
        mask = ((pred - lo) / max(hi - lo, 1e-6)).astype(np.float32)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(mask, 0.0, 1.0)
