"""The idphoto handler: one portrait in, one compliant ID photo (and optionally a print
sheet) out, or a rejection with a reason a clerk can act on.

Pipeline: find faces with the FaceFinder's ``idphoto`` policy (one face required; the finder
picks the pyramid levels, so a 12 MP portrait costs no more than a 640-px one) -> 5-point landmarks
(roll from the eyes, yaw from the nose) -> person mask on a face-centred crop (the
segmenters see the subject larger and less background clutter) -> crown from the mask ->
one affine warp (rotate + scale + translate) straight to the preset's pixel size, so the
photo is resampled once -> composite on the flat colour -> encode with 300-dpi metadata
and nothing else.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import structlog
from PIL import Image, ImageDraw

from facewarden.errors import InputRejected, ProcessingFailed
from facewarden.handlers.base import Handler, HandlerContext, HandlerResult, Output, register
from facewarden.handlers.idphoto_presets import Preset, background_name, parse_background, resolve
from facewarden.handlers.imageio import DecodedImage
from facewarden.handlers.params import Param, ParamSchema
from facewarden.models.landmarks import from_detection
from facewarden.models.protocols import Face

log = structlog.get_logger(__name__)

SHEET_W, SHEET_H = 1795, 1205  # 6-inch print at 300 dpi
DETECTOR = "finder-idphoto"
MAX_ROLL_DEG = 30.0
MAX_YAW = 0.30  # nose offset from the eye midpoint, in inter-eye distances
SECOND_FACE_RATIO = 0.35  # faces smaller than this x the main face are background noise
#: A second face must be this sure (calibrated score) to reject the photo: YuNet reports big
#: low-score boxes on busy backgrounds (a painting behind a portrait scores 0.6-0.7), real
#: faces ~0.9.
SECOND_FACE_SCORE = 0.8

REASONS = {
    "idphoto.no_face": "No face was found. Use a photo where the person faces the camera, well lit.",
    "idphoto.multiple_faces": "More than one face is in the photo. Use a photo of one person alone.",
    "idphoto.face_too_small": "The face is too small for this size: the photo would be blurry. "
                              "Take the photo closer or with a higher resolution camera.",
    "idphoto.head_cut_off": "The top of the head is cut off. Retake the photo with space above the head.",
    "idphoto.face_at_edge": "The face is too close to the edge of the photo to crop it. "
                            "Retake the photo with the person in the middle.",
    "idphoto.head_turned": "The head is turned or tilted too far. The person must look straight at the camera.",
    "idphoto.segmentation_failed": "The person could not be separated from the background. "
                                   "Use a plain, uncluttered background.",
    "idphoto.size_cap": "The photo cannot be made small enough for the requested size limit (KB).",
}


def _rounded(lo: float, hi: float, digits: int, what: str):
    def parse(value: Any) -> float:
        v = float(value)
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}{what}")
        return round(v, digits)
    return parse


def _max_kb(value: Any) -> int | None:
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, bool):
        raise ValueError("must be a whole number of KB")
    kb = int(value)
    if not 5 <= kb <= 10_000:
        raise ValueError("must be between 5 and 10000")
    return kb


def _background(value: Any) -> str:
    return background_name(parse_background(value))


SCHEMA = ParamSchema("idphoto", [
    Param("size", "custom", "1-inch", "size preset (ours and HivisionIDPhotos' 18 by their English names: "
          "`facewarden handlers idphoto` and idphoto_presets.py list them), 'W_MM,H_MM,DPI' or 'WxH' pixels",
          parse=lambda v: resolve(v).name, type_text="preset | W_MM,H_MM,DPI | WxH"),
    Param("background", "custom", "white", "red (255,0,0), blue (67,142,219), white, #rrggbb, or transparent "
          "(a PNG with alpha)", parse=_background, type_text="red | blue | white | #rrggbb | transparent"),
    Param("feather", "custom", 1.5, "soft edge of the person mask, in px", parse=_rounded(0, 20, 2, " px"),
          type_text="number [0, 20]"),
    Param("format", "choice", "jpeg", "file format of the photo (png with background=transparent)",
          choices=("jpeg", "png"),
          aliases={"jpg": "jpeg", ".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}),
    Param("max_kb", "custom", None, "size cap for upload portals (JPEG quality search); none = no cap",
          parse=_max_kb, type_text="integer [5, 10000]"),
    Param("sheet", "bool", False, "also write a 6-inch print sheet (-sheet suffix) with cut lines"),
    Param("max_upscale", "custom", 2.0, "never enlarge the face more than this", parse=_rounded(0.5, 8, 3, ""),
          type_text="number [0.5, 8]"),
    Param("segmenter", "choice", "fused", "person segmentation model", choices=("fused", "rembg", "mediapipe")),
], "Segments the person, puts them on a flat background, crops and scales to an ID-photo size.")


def _reject(code: str, detail: str = "") -> InputRejected:
    return InputRejected(code, REASONS[code] + (f" ({detail})" if detail else ""))


class IdPhotoHandler(Handler):
    name = "idphoto"
    schema = SCHEMA

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._detector = None
        self._landmarks = None
        self._segmenters: dict[str, Any] = {}

    # -- params ---------------------------------------------------------------------------
    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        out = SCHEMA.validate(params)
        if out["background"] == "transparent":
            out["format"] = "png"  # a transparent background needs an alpha channel: JPEG has none
        return out

    # -- models ---------------------------------------------------------------------------
    def _models(self, ctx: HandlerContext, segmenter: str):
        with self._lock:
            if self._detector is None:
                from facewarden.models.detectors import make_detector
                from facewarden.models.landmarks import FivePointLandmarks

                self._detector = make_detector(DETECTOR, ctx.models_dir)
                self._landmarks = FivePointLandmarks(ctx.models_dir)
            if segmenter not in self._segmenters:
                from facewarden.models.segmenters import make_segmenter

                self._segmenters[segmenter] = make_segmenter(segmenter, ctx.models_dir)
            return self._detector, self._landmarks, self._segmenters[segmenter]

    def warm_up(self, ctx: HandlerContext, params: Mapping[str, Any]) -> None:
        p = self.validate_params(params)
        self._models(ctx, p["segmenter"])

    # -- run ------------------------------------------------------------------------------
    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult:
        p = self.validate_params(params)
        preset = resolve(p["size"])
        colour = parse_background(p["background"])
        detector, landmarks, segmenter = self._models(ctx, p["segmenter"])
        rgb = image.rgb
        photo, geo = compose(rgb, preset, colour, detector, landmarks, segmenter,
                             feather=p["feather"], max_upscale=p["max_upscale"])
        data = encode_photo(photo, preset.dpi, p["format"], p["max_kb"])
        ext, ctype = (".jpg", "image/jpeg") if p["format"] == "jpeg" else (".png", "image/png")
        outputs = [Output(data, ext, ctype, "")]
        if p["sheet"]:
            sheet, copies = print_sheet(photo)
            outputs.append(Output(encode_photo(sheet, 300, p["format"], None), ext, ctype, "-sheet"))
            geo["sheet_copies"] = copies
        facts = {"preset": preset.name, "size_px": [preset.width_px, preset.height_px], "dpi": preset.dpi,
                 "background": p["background"], "faces": 1, **geo, "bytes": len(data)}
        log.info("idphoto.done", preset=preset.name, background=p["background"],
                 head_ratio=geo["head_ratio"], top_ratio=geo["top_ratio"])
        models = [*detector.model_ids(), *landmarks.model_ids(), *segmenter.model_ids()]
        return HandlerResult(outputs=outputs, facts=facts, models=models)


register("idphoto", IdPhotoHandler)


# -- geometry -----------------------------------------------------------------------------
def find_one_face(rgb: np.ndarray, detector) -> Face:
    faces = sorted(detector.detect(rgb), key=lambda f: f.w * f.h, reverse=True)
    if not faces:
        raise _reject("idphoto.no_face")
    main = faces[0]
    others = [f for f in faces[1:] if f.w >= SECOND_FACE_RATIO * main.w and f.score >= SECOND_FACE_SCORE]
    if others:
        raise _reject("idphoto.multiple_faces", f"{1 + len(others)} faces found")
    return main


def residual_roll(rgb: np.ndarray, face: Face, mid: tuple[float, float], roll: float, landmarks) -> float:
    """The roll left after levelling the face by ``roll``, measured by dlib's predictor.

    Landmark models are trained on upright faces and under-read a strong tilt (a head
    rotated 40 degrees reads as ~21 from YuNet's or CenterFace's points): measuring again on
    the levelled face corrects it, which both levels better and rejects what is too tilted."""
    side = int(2.5 * max(face.w, face.h))
    cx, cy = face.x + face.w / 2, face.y + face.h / 2
    rot = cv2.getRotationMatrix2D(mid, roll, 1.0)
    ncx, ncy = rot @ np.array([cx, cy, 1.0])
    x0, y0 = ncx - side / 2, ncy - side / 2
    rot[:, 2] -= (x0, y0)
    crop = cv2.warpAffine(rgb, rot, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    level = Face(ncx - x0 - face.w / 2, ncy - y0 - face.h / 2, face.w, face.h, face.score)
    e = landmarks.locate(crop, level)
    return math.degrees(math.atan2(e.right_eye[1] - e.left_eye[1], e.right_eye[0] - e.left_eye[0]))


def compose(rgb: np.ndarray, preset: Preset, colour: tuple[int, int, int] | None, detector, landmarks,
            segmenter, *, feather: float = 1.5, max_upscale: float = 2.0) -> tuple[np.ndarray, dict]:
    """Returns the finished photo, (H, W, 3) uint8 on the colour or (H, W, 4) RGBA when
    ``colour`` is None (transparent), and head-geometry facts (numbers only)."""
    H, W = rgb.shape[:2]
    face = find_one_face(rgb, detector)
    eyes = from_detection(face) or landmarks.locate(rgb, face)
    lx, ly = eyes.left_eye
    rx, ry = eyes.right_eye
    roll = math.degrees(math.atan2(ry - ly, rx - lx))
    eye_d = math.hypot(rx - lx, ry - ly)
    mid = ((lx + rx) / 2, (ly + ry) / 2)
    roll += residual_roll(rgb, face, mid, roll, landmarks)
    # Nose offset along the eye line, relative to the eye distance: 0 for a frontal face.
    ux, uy = (rx - lx) / max(eye_d, 1e-6), (ry - ly) / max(eye_d, 1e-6)
    yaw = ((eyes.nose[0] - mid[0]) * ux + (eyes.nose[1] - mid[1]) * uy) / max(eye_d, 1e-6)
    if abs(roll) > MAX_ROLL_DEG or abs(yaw) > MAX_YAW or eye_d < 0.2 * face.w:
        raise _reject("idphoto.head_turned", f"roll {roll:.0f} deg, yaw index {yaw:.2f}")

    # Segment a face-centred crop: the person is larger in the model's input and most
    # background clutter (the usual source of false person pixels) is outside it.
    fx0 = int(max(0, face.x - 1.6 * face.w))
    fx1 = int(min(W, face.x + 2.6 * face.w))
    fy0 = int(max(0, face.y - 1.2 * face.h))
    fy1 = int(min(H, face.y + 3.2 * face.h))
    crop = np.ascontiguousarray(rgb[fy0:fy1, fx0:fx1])
    try:
        prob = segmenter.segment(crop)
    except ProcessingFailed:
        raise
    mask = np.zeros((H, W), np.float32)
    mask[fy0:fy1, fx0:fx1] = _clean_mask(prob, (face.x - fx0, face.y - fy0, face.w, face.h))

    # Rotation about the eye midpoint that levels the eyes.
    rot = cv2.getRotationMatrix2D(mid, roll, 1.0)  # 2x3, maps source -> levelled
    # Crown: topmost person pixel above the eyes within the central face span, measured in
    # levelled coordinates (rotate the mask; the crop region is small enough to be cheap).
    lev_mask = cv2.warpAffine(mask, rot, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
    cx0, cx1 = int(max(0, mid[0] - 0.3 * face.w)), int(min(W, mid[0] + 0.3 * face.w))
    col = lev_mask[: int(mid[1]), cx0:cx1] > 0.5
    rows = np.nonzero(col.mean(axis=1) > 0.3)[0] if col.size else np.array([], int)
    if rows.size == 0:
        raise _reject("idphoto.segmentation_failed", "no person pixels above the eyes")
    crown_y = float(rows[0])
    # The levelled face box: rotation about the eye midpoint keeps its centre near the same
    # place; the chin is the box bottom (YuNet boxes end at the chin).
    fc = rot @ np.array([face.x + face.w / 2, face.y + face.h / 2, 1.0])
    chin_y = float(fc[1] + face.h / 2)
    if crown_y <= 1 or (crown_y <= fy0 + 1 and fy0 == 0):
        raise _reject("idphoto.head_cut_off")
    if chin_y - mid[1] < 0.3 * face.h:
        raise _reject("idphoto.segmentation_failed", "face geometry is inconsistent")
    head = chin_y - crown_y
    if head < 0.8 * face.h or head > 2.2 * face.h:
        raise _reject("idphoto.segmentation_failed", "the person mask does not match the face")

    scale = preset.head_ratio * preset.height_px / head
    if scale > max_upscale:
        raise _reject("idphoto.face_too_small",
                      f"head is {head:.0f} px, needs {preset.head_ratio * preset.height_px / max_upscale:.0f} px")
    # Where the output's edges fall in levelled source pixels: the face must leave room
    # for a sensible crop sideways (a little padding is fine, a half face is not).
    half_w = preset.width_px / 2 / scale
    left, right = mid[0] - half_w, mid[0] + half_w
    if face.x < 2 or face.x + face.w > W - 2 or (left < -0.5 * half_w) or (right > W + 0.5 * half_w):
        raise _reject("idphoto.face_at_edge")

    # One affine: levelled -> output (scale, then move the eye midpoint to the centre line
    # and the crown to the top margin).
    tx = preset.width_px / 2 - scale * mid[0]
    ty = preset.top_ratio * preset.height_px - scale * crown_y
    A = np.array([[scale, 0, tx], [0, scale, ty]]) @ np.vstack([rot, [0, 0, 1]])
    size = (preset.width_px, preset.height_px)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out_rgb = cv2.warpAffine(rgb, A, size, flags=interp, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, A, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Above the crown nothing may be "person" that replicate-padding invented.
    top_px = int(preset.top_ratio * preset.height_px)
    alpha[: max(0, top_px - 2)] = 0
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    alpha = np.clip(alpha, 0, 1)[..., None]
    if colour is None:
        out = np.dstack([out_rgb, np.clip(alpha[..., 0] * 255 + 0.5, 0, 255).astype(np.uint8)])
    else:
        bg = np.array(colour, np.float32)
        out = out_rgb.astype(np.float32) * alpha + bg * (1 - alpha)
        out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    geo = {
        "head_ratio": round(head * scale / preset.height_px, 4),
        "top_ratio": round(preset.top_ratio, 4),
        "head_px": round(head * scale, 1),
        "scale": round(scale, 4),
        "roll_deg": round(roll, 2),
        "yaw_index": round(yaw, 3),
        "eye_distance_px": round(eye_d * scale, 1),
    }
    return out, geo


def _clean_mask(prob: np.ndarray, face_box: tuple[float, float, float, float]) -> np.ndarray:
    """Keeps the person component that covers the face, fills its holes, and keeps the
    soft edge: background objects and other people are dropped."""
    x, y, w, h = face_box
    binary = (prob > 0.5).astype(np.uint8)
    n, lab = cv2.connectedComponents(binary, connectivity=8)
    fx0, fy0 = int(max(0, x)), int(max(0, y))
    fx1, fy1 = int(min(prob.shape[1], x + w)), int(min(prob.shape[0], y + h))
    face_lab = lab[fy0:fy1, fx0:fx1]
    counts = np.bincount(face_lab.ravel(), minlength=n)
    counts[0] = 0
    if n <= 1 or counts.max() < 0.4 * max(1, face_lab.size):
        raise _reject("idphoto.segmentation_failed", "person mask does not cover the face")
    keep = (lab == int(counts.argmax())).astype(np.uint8)
    # Fill holes: flood the background from the border; what it cannot reach is a hole.
    inv = (1 - keep).astype(np.uint8)
    _, lab2 = cv2.connectedComponents(inv, connectivity=4)
    border = set(np.unique(np.concatenate([lab2[0], lab2[-1], lab2[:, 0], lab2[:, -1]])).tolist())
    holes = (inv == 1) & ~np.isin(lab2, list(border))
    keep[holes] = 1
    # Soft edge: original probability inside a thin band around the kept component.
    band = cv2.dilate(keep, np.ones((5, 5), np.uint8))
    soft = np.where(keep == 1, np.maximum(prob, 0.5), prob * band)
    soft[holes] = 1.0
    return soft.astype(np.float32)


# -- output -------------------------------------------------------------------------------
def encode_photo(rgb: np.ndarray, dpi: int, fmt: str, max_kb: int | None) -> bytes:
    """Encodes with only the dpi field set: Pillow writes nothing we do not pass (no EXIF,
    no XMP, no thumbnail). JPEG uses 4:4:4 so flat colours stay exact. Four channels (a
    transparent background) are written as PNG with alpha."""
    im = Image.fromarray(rgb, "RGBA" if rgb.ndim == 3 and rgb.shape[2] == 4 else "RGB")

    def jpeg(q: int) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q, subsampling=0 if q >= 80 else 2, optimize=True, dpi=(dpi, dpi))
        return buf.getvalue()

    if fmt == "png":
        buf = io.BytesIO()
        im.save(buf, "PNG", dpi=(dpi, dpi), optimize=True)
        data = buf.getvalue()
        if max_kb is not None and len(data) > max_kb * 1024:
            raise _reject("idphoto.size_cap", f"PNG is {len(data) // 1024} KB; use format=jpeg")
        return data
    data = jpeg(95)
    if max_kb is None or len(data) <= max_kb * 1024:
        return data
    lo, hi, best = 20, 94, None
    while lo <= hi:  # highest quality that fits
        q = (lo + hi) // 2
        cand = jpeg(q)
        if len(cand) <= max_kb * 1024:
            best, lo = cand, q + 1
        else:
            hi = q - 1
    if best is None:
        raise _reject("idphoto.size_cap", f"even the lowest quality is over {max_kb} KB")
    return best


def print_sheet(photo: np.ndarray, gap: int = 24) -> tuple[np.ndarray, int]:
    """Tiles as many copies as fit on a 6-inch (1795x1205 px, 300 dpi) sheet, in whichever
    orientation holds more, with thin grey cut lines between copies."""
    ph, pw = photo.shape[:2]
    best = None
    for sw, sh in ((SHEET_W, SHEET_H), (SHEET_H, SHEET_W)):
        cols, rows = (sw + gap) // (pw + gap), (sh + gap) // (ph + gap)
        if best is None or cols * rows > best[0] * best[1]:
            best = (cols, rows, sw, sh)
    cols, rows, sw, sh = best
    if cols * rows == 0:
        raise _reject("idphoto.size_cap", "the photo is larger than a 6-inch sheet")
    mode = "RGBA" if photo.ndim == 3 and photo.shape[2] == 4 else "RGB"
    sheet = Image.new(mode, (sw, sh), (255, 255, 255, 0) if mode == "RGBA" else (255, 255, 255))
    x0 = (sw - (cols * pw + (cols - 1) * gap)) // 2
    y0 = (sh - (rows * ph + (rows - 1) * gap)) // 2
    tile = Image.fromarray(photo, mode)
    draw = ImageDraw.Draw(sheet)
    for r in range(rows):
        for c in range(cols):
            sheet.paste(tile, (x0 + c * (pw + gap), y0 + r * (ph + gap)))
    grey = (170, 170, 170)
    for c in range(cols + 1):
        x = x0 + c * (pw + gap) - gap // 2
        draw.line([(x, 0), (x, sh)], fill=grey, width=1)
    for r in range(rows + 1):
        y = y0 + r * (ph + gap) - gap // 2
        draw.line([(0, y), (sw, y)], fill=grey, width=1)
    return np.asarray(sheet), cols * rows
