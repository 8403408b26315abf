"""Person segmentation with MediaPipe's selfie segmenter (Tasks API, mediapipe 1.2.x).

``mediapipe.solutions`` no longer exists, so this uses ``vision.ImageSegmenter`` on the
``selfie_segmentation.tflite`` file from the pinned registry. The model is fast (~10 ms)
and robust about *which* pixels are the person, but its 256x256 output gives blocky edges.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.mediapipe_lazy import defer_package_inits
from facewarden.models.protocols import ModelId
from facewarden.models.quiet import native_output
from facewarden.models.registry import ModelSpec, mediapipe_member, model_file, register_model
from facewarden.models.segmenters import SEGMENTERS

MODEL = register_model(ModelSpec(
    "mediapipe-selfie-segmentation",
    mediapipe_member("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"),
    "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    "Apache-2.0", "person segmentation (MediaPipe selfie)",
))

#: Every ImageSegmenter this process created, kept alive until interpreter exit. mediapipe
#: 1.2.2 runs each instance's C calls on its own executor, held in a reference cycle; when
#: the cycle collector freed an ImageSegmenter, its ``__del__`` waited forever for ``close``
#: on that executor (a hang at the end of a pytest run, stack in ``close``). At interpreter
#: exit mediapipe skips those calls, so keeping the small, load-once segmenters alive is safe.
_KEEP_ALIVE: list[object] = []


class MediaPipeSegmenter:
    name = "mediapipe-selfie"

    def __init__(self, models_dir: Path):
        defer_package_inits()  # MediaPipe without matplotlib & co: ~1-2 s less start-up
        from mediapipe.tasks.python import BaseOptions, vision

        path, self._model_id = model_file(models_dir, "mediapipe-selfie-segmentation")
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            output_confidence_masks=True,
            output_category_mask=False,
        )
        try:
            with native_output("mediapipe-selfie"):
                self._segmenter = vision.ImageSegmenter.create_from_options(options)
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("segmenter.load", f"could not load selfie segmenter: {exc}",
                                   retryable=False) from exc
        _KEEP_ALIVE.append(self._segmenter)
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        import mediapipe as mp

        h, w = rgb.shape[:2]
        # The model works at 256x256: anything bigger only costs copy and resize time.
        scale = min(1.0, 512 / max(h, w))
        small = rgb if scale >= 1.0 else cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(small))
        try:
            # LiteRT/glog may print at any inference (a misaligned tensor, glog's first line).
            with self._lock, native_output("mediapipe-selfie"):
                result = self._segmenter.segment(image)
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("segmenter.error", f"selfie segmenter failed: {type(exc).__name__}") from exc
        masks = result.confidence_masks or []
        if not masks:
            raise ProcessingFailed("segmenter.error", "selfie segmenter returned no mask")
        # One channel (person) for this model; with two, the last one is the person.
        # Copy: the view points into MediaPipe's buffer, freed with ``result``.
        mask = np.array(masks[-1].numpy_view(), dtype=np.float32, copy=True).reshape(small.shape[:2])
        if mask.shape != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(mask, 0.0, 1.0)


@SEGMENTERS.register("mediapipe")
def _build(models_dir: Path) -> MediaPipeSegmenter:
    return MediaPipeSegmenter(models_dir)
