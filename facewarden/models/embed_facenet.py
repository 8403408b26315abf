"""FaceNet (20180408-102900, 512-d) run by OpenCV's dnn module, no TensorFlow needed.

Alignment: FaceNet was trained on MTCNN crops (a face box plus a margin, resized to 160 px).
Instead of running MTCNN's three networks, the crop is cut by a similarity transform from
dlib's 5-point landmarks (``dlib.get_face_chip``), which gives the same framing (eyes level,
face centred, a margin around it) from the landmarks the default backend already computes.
The graph expects "fixed image standardisation", (x - 127.5) / 128, the training recipe of
the 2018 models; embeddings are L2-normalised here so distances are comparable.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.embed_dlib import DlibEmbedder
from facewarden.models.protocols import Face, ModelId
from facewarden.models.registry import model_file

#: Euclidean distance between unit embeddings below which two faces are one person.
#: bench/verify_pairs.py on identities-knn: same person ≤ 0.85, different people ≥ 1.03.
FACENET_THRESHOLD = 0.95
#: Margin around the aligned face as a fraction of dlib's chip (≈ MTCNN's 32 px on 182).
CHIP_PADDING = 0.3


class FaceNetEmbedder:
    name = "facenet-20180408"
    dim = 512
    default_threshold = FACENET_THRESHOLD

    def __init__(self, models_dir: Path, *, aligner: DlibEmbedder | None = None):
        import cv2

        path, self._id = model_file(models_dir, "facenet-20180408")
        self._net = cv2.dnn.readNetFromTensorflow(str(path))
        self._aligner = aligner or DlibEmbedder(models_dir)
        self._lock = threading.Lock()  # a cv2.dnn.Net is not safe to run from two threads

    def model_ids(self) -> list[ModelId]:
        return [self._id, self._aligner.model_ids()[0]]

    def chips(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        import dlib

        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        shapes = self._aligner.shapes(img, faces)
        return [np.asarray(dlib.get_face_chip(img, s, size=160, padding=CHIP_PADDING)) for s in shapes]

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        import cv2

        if not faces:
            return []
        try:
            chips = self.chips(rgb, faces)
            blob = cv2.dnn.blobFromImages(chips, 1.0 / 128.0, (160, 160), (127.5, 127.5, 127.5), swapRB=False)
            with self._lock:
                self._net.setInput(blob)
                out = np.asarray(self._net.forward(), dtype=np.float32).reshape(len(chips), -1)
        except Exception as exc:  # noqa: BLE001 - a native failure is a processing failure
            raise ProcessingFailed("embedder.error", f"FaceNet embedding failed: {type(exc).__name__}") from exc
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return list(out)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)
