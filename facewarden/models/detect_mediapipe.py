"""MediaPipe BlazeFace full-range through the Tasks API (``mediapipe.solutions`` is gone).

The model sees its input letterboxed to 192×192, so on its own it only finds faces that are
large relative to the frame; it is fast (~10 ms), which makes it a cheap second opinion when
run over tiles (see ``facewarden.models.detectors.TiledDetector``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.detectors import TiledDetector, register_detector
from facewarden.models.mediapipe_lazy import defer_package_inits
from facewarden.models.protocols import Face, FaceDetector, ModelId
from facewarden.models.quiet import native_output
from facewarden.models.registry import ModelSpec, mediapipe_member, model_file, register_model

MODEL = register_model(ModelSpec(
    "mediapipe-face-full-range",
    mediapipe_member("mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"),
    "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    "Apache-2.0", "face detection (MediaPipe BlazeFace full range)",
))


class MediaPipeDetector:
    name = "mediapipe"

    def __init__(self, models_dir: Path, *, min_score: float = 0.5, threads: int = 1):
        defer_package_inits()  # MediaPipe without matplotlib & co: ~1-2 s less start-up
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        if not 0.0 <= min_score <= 1.0:
            raise ValueError("min_score must be within [0, 1]")
        path, self._model_id = model_file(models_dir, "mediapipe-face-full-range")
        self.min_score = min_score
        # The model file is read into memory here so that a later change on disk cannot
        # swap the bytes the audit record vouches for.
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_buffer=path.read_bytes()),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=min_score,
            min_suppression_threshold=0.3,
        )
        with native_output("mediapipe-face"):  # LiteRT prints ~55 lines while loading
            self._detector = vision.FaceDetector.create_from_options(options)
        # A task graph is not safe to call from two threads at once.
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import mediapipe as mp

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ProcessingFailed("detector.bad_input", "detector needs an RGB uint8 image", retryable=False)
        h, w = rgb.shape[:2]
        try:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
            # LiteRT/glog may print at any inference (a misaligned tensor, glog's first line).
            with self._lock, native_output("mediapipe-face"):
                result = self._detector.detect(image)
        except Exception as exc:  # noqa: BLE001 - any runtime failure means "did not look"
            raise ProcessingFailed("detector.error", f"MediaPipe failed: {type(exc).__name__}") from exc
        faces = []
        for det in result.detections:
            score = float(det.categories[0].score) if det.categories else 0.0
            bb = det.bounding_box
            if score < self.min_score or bb.width <= 0 or bb.height <= 0:
                continue
            kp = [(k.x * w, k.y * h) for k in det.keypoints]
            # MediaPipe gives eyes, nose tip, mouth centre and ears; the protocol's five
            # points are eyes, nose and two mouth corners, so the centre stands for both.
            landmarks = (kp[0], kp[1], kp[2], kp[3], kp[3]) if len(kp) >= 4 else ()
            faces.append(Face(float(bb.origin_x), float(bb.origin_y), float(bb.width),
                              float(bb.height), score, landmarks))
        return faces


@register_detector("mediapipe", {"min_score", "threads"}, "one MediaPipe full-range pass, whole frame")
def _build(models_dir: Path, *, min_score: float = 0.5, threads: int = 1) -> FaceDetector:
    return MediaPipeDetector(models_dir, min_score=min_score)


@register_detector("mediapipe-tiled", {"min_score", "tile", "tile_overlap", "max_tiles"},
                   "MediaPipe over overlapping square tiles")
def _build_tiled(models_dir: Path, *, min_score: float = 0.5, tile: int = 256, tile_overlap: float = 0.25,
                 max_tiles: int = 40) -> FaceDetector:
    return TiledDetector(MediaPipeDetector(models_dir, min_score=min_score), tile=tile, overlap=tile_overlap,
                         max_tiles=max_tiles)
