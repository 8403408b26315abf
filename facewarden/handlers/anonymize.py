"""The ``anonymize`` handler: find every face and obscure it, strip all metadata.

Fail closed: if the detector cannot run, ``run`` raises ``ProcessingFailed`` and returns no
output, so the worker quarantines the input instead of writing an un-anonymized copy. The
output is re-encoded from pixels by ``imageio.encode``, which writes no EXIF/XMP/IPTC and no
embedded thumbnail (the thumbnail would be an un-blurred copy of the original).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import structlog

from facewarden.errors import FacewardenError, InputRejected, ProcessingFailed
from facewarden.handlers.base import Handler, HandlerContext, HandlerResult, Output, register
from facewarden.handlers.imageio import DecodedImage, encode
from facewarden.handlers.params import Param, ParamSchema
from facewarden.models.detectors import make_detector
from facewarden.models.detectors import names as detector_names
from facewarden.models.protocols import Face, FaceDetector

log = structlog.get_logger(__name__)

MODES = ("blur", "pixelate", "fill")
SHAPES = ("ellipse", "box")
#: Added on every side, as a fraction of the face box. Detector boxes are tight and
#: sometimes off-centre on small faces; 0.2 per side (a 1.4× box) keeps hair line, ears and
#: chin inside the ellipse. Chosen with bench/recall.py.
DEFAULT_MARGIN = 0.2
#: ...but never less than this many pixels per side. A detector's box on a 10-15 px face is
#: off by 2-4 px whatever the face size (YuNet's boxes there are also narrower than the
#: face), so a purely relative margin leaves the edge of tiny faces visible. On the
#: bench/recall.py canvas variant (median face 12 px) the default detector covered 123/129
#: faces with no floor; on 6 canvases 254/258 with 4 px and 258/258 with 5 px, for ~+0.3%
#: of the image area obscured. Faces above 25 px are unaffected.
MIN_MARGIN_PX = 5.0
#: The FaceFinder under its ``anonymize`` (recall-first) policy: see facewarden/models/finder.py.
DEFAULT_DETECTOR = "auto"
#: Low on purpose: a blurred false positive costs little, a missed face is a leak. For
#: ``auto`` this is on the finder's calibrated scale (POLICIES["anonymize"].min_score);
#: for a single-model detector it is that model's raw score.
DEFAULT_MIN_SCORE = 0.3
DEFAULT_JPEG_QUALITY = 90
#: Blur sigma as a fraction of the face size: strong enough that features are gone at any
#: scale, unlike a fixed kernel that barely touches a 400-px face.
BLUR_SIGMA_FRACTION = 0.25
#: Blocks across a face when pixelating; ~6 leaves no identifiable detail.
PIXELATE_BLOCKS = 6

#: Params of the video anonymize handler that a photo ignores.
VIDEO_ONLY_PARAMS = ("crf", "preset", "vp9_crf", "detect_every", "pad_frames", "max_gap", "threads")

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128),
            "gray": (128, 128, 128)}


def _expanded(face: Face, margin: float, w: int, h: int) -> tuple[int, int, int, int] | None:
    """The face box grown by ``margin`` per side (at least ``MIN_MARGIN_PX``), unclipped:
    (x0, y0, x1, y1), or None when nothing of it lies inside the image."""
    if not all(math.isfinite(v) for v in (face.x, face.y, face.w, face.h)):
        raise ProcessingFailed("detector.bad_output", "the detector returned a non-finite box",
                               retryable=False)
    mx, my = max(face.w * margin, MIN_MARGIN_PX), max(face.h * margin, MIN_MARGIN_PX)
    x0, y0 = math.floor(face.x - mx), math.floor(face.y - my)
    x1, y1 = math.ceil(face.x + face.w + mx), math.ceil(face.y + face.h + my)
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    return x0, y0, x1, y1


def _region_mask(x0: int, y0: int, x1: int, y1: int, w: int, h: int, shape: str
                 ) -> tuple[tuple[slice, slice], np.ndarray]:
    """Boolean mask of the (unclipped) region, cut to the image: (slices, mask)."""
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    sl = (slice(cy0, cy1), slice(cx0, cx1))
    if shape == "box":
        return sl, np.ones((cy1 - cy0, cx1 - cx0), bool)
    yy, xx = np.mgrid[cy0:cy1, cx0:cx1]
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    ax, ay = max((x1 - x0) / 2.0, 0.5), max((y1 - y0) / 2.0, 0.5)
    inside = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1.0
    return sl, inside


def face_mask(height: int, width: int, faces: Sequence[Face], *, shape: str = "ellipse",
              margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The boolean (H, W) mask of pixels ``obscure_faces`` replaces — what a recall
    benchmark measures, without guessing it back from pixel differences."""
    mask = np.zeros((height, width), bool)
    for face in faces:
        box = _expanded(face, margin, width, height)
        if box is None:
            continue
        sl, m = _region_mask(*box, width, height, shape)
        mask[sl] |= m
    return mask


def _blurred(img: np.ndarray, box: tuple[int, int, int, int], size: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """A strongly blurred copy of the box and its surroundings (the context keeps the blur
    from being dragged towards the box edge)."""
    h, w = img.shape[:2]
    sigma = max(2.0, BLUR_SIGMA_FRACTION * size)
    pad = math.ceil(2 * sigma)
    x0, y0, x1, y1 = box
    px0, py0 = max(0, x0 - pad), max(0, y0 - pad)
    px1, py1 = min(w, x1 + pad), min(h, y1 + pad)
    roi = img[py0:py1, px0:px1]
    # Large sigmas are done at reduced resolution: same look, bounded cost on huge faces.
    k = max(1.0, sigma / 6.0)
    if k > 1.0:
        small = cv2.resize(roi, (max(1, round(roi.shape[1] / k)), max(1, round(roi.shape[0] / k))),
                           interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / k, borderType=cv2.BORDER_REFLECT)
        out = cv2.resize(small, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_LINEAR)
    else:
        out = cv2.GaussianBlur(roi, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return out, (slice(py0, py1), slice(px0, px1))


def obscure_faces(rgb: np.ndarray, faces: Sequence[Face], *, mode: str = "blur",
                  shape: str = "ellipse", margin: float = DEFAULT_MARGIN,
                  fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Returns a new image with every face obscured; the input array is left untouched.

    ``mode``: "blur" (gaussian, strength grows with face size), "pixelate" or "fill" (solid
    ``fill`` colour). ``shape``: "ellipse" (inscribed in the grown box) or "box".
    ``margin``: added per side as a fraction of the face's width/height.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}")
    if not 0.0 <= margin <= 2.0:
        raise ValueError("margin must be within [0, 2]")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("rgb must be an (H, W, 3) uint8 array")
    out = np.array(rgb, copy=True, order="C")
    h, w = out.shape[:2]
    colour = np.array(fill, dtype=np.uint8)
    for face in faces:
        box = _expanded(face, margin, w, h)
        if box is None:
            continue
        sl, m = _region_mask(*box, w, h, shape)
        region = out[sl]
        size = max(box[2] - box[0], box[3] - box[1])
        if mode == "fill":
            region[m] = colour
        elif mode == "blur":
            blurred, psl = _blurred(out, box, size)
            oy, ox = sl[0].start - psl[0].start, sl[1].start - psl[1].start
            src = blurred[oy:oy + region.shape[0], ox:ox + region.shape[1]]
            region[m] = src[m]
        else:  # pixelate: blocks aligned to the (clipped) region
            rh, rw = region.shape[:2]
            block = max(2.0, size / PIXELATE_BLOCKS)
            small = cv2.resize(region, (max(1, round(rw / block)), max(1, round(rh / block))),
                               interpolation=cv2.INTER_AREA)
            pix = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST)
            region[m] = pix[m]
    return out


def _rejected(msg: str) -> InputRejected:
    return InputRejected("params.invalid", msg)


def _colour(value: Any) -> list[int]:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _COLOURS:
            return list(_COLOURS[v])
        m = _HEX.match(v)
        if m:
            n = int(m.group(1), 16)
            return [(n >> 16) & 255, (n >> 8) & 255, n & 255]
    elif isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value):
        return [int(c) for c in value]
    raise _rejected("fill must be '#rrggbb', a colour name (black, white, grey) or [r, g, b] 0-255")


SCHEMA = ParamSchema("anonymize", [
    Param("detector", "choice", DEFAULT_DETECTOR, "auto: the FaceFinder's recall-first policy (a YuNet image "
          "pyramid + CenterFace + one MediaPipe full-frame pass, calibrated and fused); ensemble: YuNet 1x + "
          "MediaPipe, the previous default, ~6x faster on a 1 MP photo but blind to more small and turned "
          "faces; the others are single backends for comparison",
          choices=tuple(detector_names())),
    Param("mode", "choice", "blur", "blur (strength grows with face size), pixelate, or fill", choices=MODES),
    Param("shape", "choice", "ellipse", "shape of each obscured region", choices=SHAPES),
    Param("margin", "number", DEFAULT_MARGIN, "extra size around each face, per side, as a share of the face "
          f"(at least {MIN_MARGIN_PX:.0f} px)", minimum=0.0, maximum=2.0),
    Param("min_score", "number", DEFAULT_MIN_SCORE, "detector confidence floor: low on purpose, a blurred patch "
          "of wall costs less than a missed face", minimum=0.05, maximum=1.0),
    Param("fill", "custom", [0, 0, 0], "colour for mode=fill", parse=_colour,
          type_text="#rrggbb | black | white | grey | [r,g,b]"),
    Param("jpeg_quality", "integer", DEFAULT_JPEG_QUALITY, "quality of JPEG results", minimum=1, maximum=100),
], "Finds every face and blurs, pixelates or fills it; strips all metadata.")


class AnonymizeHandler(Handler):
    """Detects faces with a cached detector and obscures them; see the module docstring."""

    name = "anonymize"
    schema = SCHEMA
    beside_suffix = "_anonymized"  # what deface users expect: photo.jpg -> photo_anonymized.jpg

    def __init__(self, detector_factory: Callable[..., FaceDetector] = make_detector):
        # The factory is a seam for tests that need a detector that fails the way a broken
        # model would; production always uses the cached ``make_detector``.
        self._factory = detector_factory

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        # Video-only params are the video handler's (facewarden/handlers/video.py) and mean
        # nothing for a photo: one route or batch may carry both media.
        if isinstance(params, Mapping):
            params = {k: v for k, v in params.items() if k not in VIDEO_ONLY_PARAMS}
        return SCHEMA.validate(params)

    def _detector(self, ctx: HandlerContext, params: Mapping[str, Any]) -> FaceDetector:
        try:
            return self._factory(params["detector"], ctx.models_dir, min_score=params["min_score"])
        except FacewardenError:
            raise
        except Exception as exc:  # noqa: BLE001 - no detector means no anonymization
            raise ProcessingFailed("detector.unavailable",
                                   f"detector {params['detector']!r} could not be built: {exc}") from exc

    def warm_up(self, ctx: HandlerContext, params: Mapping[str, Any]) -> None:
        p = self.validate_params(params)
        det = self._detector(ctx, p)
        det.detect(np.full((256, 256, 3), 127, np.uint8))  # first call initialises runtimes

    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult:
        p = self.validate_params(params)
        det = self._detector(ctx, p)
        t0 = time.perf_counter()
        try:
            faces = det.detect(image.rgb)
        except FacewardenError:
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed on anything the detector throws
            raise ProcessingFailed("detector.error", f"face detection failed: {type(exc).__name__}") from exc
        if not isinstance(faces, list) or not all(isinstance(f, Face) for f in faces):
            raise ProcessingFailed("detector.bad_output", "the detector returned something other than faces")
        t1 = time.perf_counter()
        pixels = obscure_faces(image.rgb, faces, mode=p["mode"], shape=p["shape"],
                               margin=p["margin"], fill=tuple(p["fill"]))
        data = encode(pixels, like=image, jpeg_quality=p["jpeg_quality"])
        t2 = time.perf_counter()
        h, w = image.height, image.width
        obscured = sum(1 for f in faces if _expanded(f, p["margin"], w, h) is not None)
        log.info("anonymize.done", faces=len(faces), detector=det.name,
                 detect_ms=round((t1 - t0) * 1000, 1), obscure_ms=round((t2 - t1) * 1000, 1))
        return HandlerResult(
            outputs=[Output(data=data, extension=image.extension, content_type=image.content_type)],
            facts={"faces": len(faces), "boxes_obscured": obscured, "detector": det.name,
                   "min_score": p["min_score"], "mode": p["mode"], "shape": p["shape"],
                   "margin": p["margin"], "detect_ms": round((t1 - t0) * 1000, 1)},
            models=det.model_ids(),
        )


register("anonymize", AnonymizeHandler)
