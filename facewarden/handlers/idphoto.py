"""The ``idphoto`` handler: a compliant ID photo from an ordinary portrait, or a reason why not.

Pipeline: one face (YuNet) -> eye and nose landmarks (dlib 5-point) -> reject what no
cropping can fix (several faces, tiny face, turned head, face at the edge) -> person mask
(fused rembg + MediaPipe, see ``facewarden.models.segmenters``) on a window around the face,
keeping only the part connected to the face -> crown from the mask, chin from the face box ->
one affine warp (level the eyes, scale the head to the preset, place the crown) straight
into the output size -> composite on the background -> JPEG/PNG with 300-dpi metadata and
nothing else; optionally a KB cap and a 6-inch print sheet.

Every rejection is an ``InputRejected`` whose message tells a clerk what to ask for. Facts
carry numbers about the geometry, never pixels.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import structlog
from PIL import Image

from facewarden.errors import FacewardenError, InputRejected, ProcessingFailed
from facewarden.handlers.base import HandlerContext, HandlerResult, Output, register
from facewarden.handlers.idphoto_presets import hex_of, parse_colour, parse_size
from facewarden.handlers.imageio import DecodedImage
from facewarden.models.detectors import make_detector
from facewarden.models.landmarks import EyeLandmarks, shape_predictor
from facewarden.models.protocols import Face
from facewarden.models.segmenters import DEFAULT as DEFAULT_SEGMENTER
from facewarden.models.segmenters import NAMES as SEGMENTER_NAMES
from facewarden.models.segmenters import make_segmenter

log = structlog.get_logger(__name__)

FORMATS = {"jpeg": (".jpg", "image/jpeg"), "png": (".png", "image/png")}
#: A face must be found with at least this YuNet score to count as "the" face.
MIN_SCORE = 0.6
#: A second face at least this wide relative to the main one means a group photo; smaller
#: ones (a poster, a passer-by far behind) are cut away by the person mask anyway.
SECOND_FACE_RATIO = 0.35
#: Detection runs on a copy at most this long: ID portraits have large faces and YuNet
#: costs grow with pixels.
DETECT_SIDE = 640
#: Below this eye distance in the source the landmarks and the upscaled output are mush.
MIN_EYE_DISTANCE_PX = 18
#: Nose offset from the eye midpoint along the eye line, in eye distances. Frontal portraits
#: measure under ~0.12; a head turned ~25 degrees measures ~0.3.
MAX_YAW = 0.28
MAX_ROLL_DEG = 25.0
DEFAULT_MAX_UPSCALE = 2.0
#: Below the chin the face box ends a little above the real chin on YuNet; this stretch of the
#: box height (measured on the demo portraits) puts the chin line where it is.
CHIN_FROM_BOX = 0.04
SHEET_PX = (1795, 1205)  # 6 x 4 inch at 300 dpi, as photo labs size it
SHEET_GAP = 12  # ~1 mm between copies, cut line in the middle
SHEET_LINE = (170, 170, 170)
MAX_KB_RANGE = (8, 10_000)


def _bad(msg: str) -> InputRejected:
    return InputRejected("params.invalid", msg)


def _float(params: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = params.get(key, default)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise _bad(f"{key} must be a number within [{lo}, {hi}]") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(f"{key} must be a number within [{lo}, {hi}]")
    return float(v)


def _bool(params: Mapping[str, Any], key: str, default: bool) -> bool:
    v = params.get(key, default)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise _bad(f"{key} must be true or false")


def sheet_layout(w: int, h: int) -> tuple[int, int]:
    """(columns, rows) of ``w``x``h`` copies that fit a 6-inch sheet with cut gaps."""
    sw, sh = SHEET_PX
    return max(0, (sw - SHEET_GAP) // (w + SHEET_GAP)), max(0, (sh - SHEET_GAP) // (h + SHEET_GAP))


# --- image helpers ---------------------------------------------------------------------

def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter: snaps a coarse mask's edges to the image's edges (hair,
    shoulders) without the halo a blur leaves. ``guide`` grey float32 in [0, 1]."""
    k = (2 * radius + 1, 2 * radius + 1)
    mean_i = cv2.boxFilter(guide, -1, k)
    mean_p = cv2.boxFilter(src, -1, k)
    cov = cv2.boxFilter(guide * src, -1, k) - mean_i * mean_p
    var = cv2.boxFilter(guide * guide, -1, k) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return cv2.boxFilter(a, -1, k) * guide + cv2.boxFilter(b, -1, k)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background enclosed by the person (a gap between collar and neck) becomes person."""
    m = mask.astype(np.uint8)
    padded = np.pad(m, 1)
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 1)
    return mask | (padded[1:-1, 1:-1] == 0)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine ``a`` after ``b``."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


@dataclass(slots=True)
class Geometry:
    roll_deg: float
    yaw: float
    scale: float
    crown_y: float  # in the levelled source frame
    chin_y: float
    eye_mid: tuple[float, float]
    padded: bool


class IdPhotoHandler:
    """See the module docstring."""

    name = "idphoto"
    PARAMS = ("size", "background", "feather", "format", "max_kb", "sheet", "max_upscale", "segmenter")

    # --- params ---------------------------------------------------------------------
    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise _bad("params must be a mapping")
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise _bad(f"unknown param(s) for idphoto: {', '.join(map(str, unknown))}; known: {', '.join(self.PARAMS)}")
        preset = parse_size(params.get("size", "1-inch"))
        out: dict[str, Any] = {"size": preset.name}
        if preset.name.startswith("custom-"):
            out["size"] = str(params["size"]).strip()
        out["background"] = hex_of(parse_colour(params.get("background", "white")))
        out["feather"] = _float(params, "feather", 0.0, 0.0, 20.0)
        fmt = str(params.get("format", "jpeg")).strip().lower()
        fmt = {"jpg": "jpeg"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise _bad("format must be jpeg or png")
        out["format"] = fmt
        max_kb = params.get("max_kb")
        if max_kb in (None, "", 0, "0"):
            out["max_kb"] = None
        else:
            try:
                kb = int(max_kb) if not isinstance(max_kb, bool) else None
            except (TypeError, ValueError):
                kb = None
            if kb is None or not MAX_KB_RANGE[0] <= kb <= MAX_KB_RANGE[1]:
                raise _bad(f"max_kb must be an integer within [{MAX_KB_RANGE[0]}, {MAX_KB_RANGE[1]}]")
            if fmt != "jpeg":
                raise _bad("max_kb needs format=jpeg (PNG size cannot be traded for quality)")
            out["max_kb"] = kb
        out["sheet"] = _bool(params, "sheet", False)
        if out["sheet"] and 0 in sheet_layout(preset.width_px, preset.height_px):
            raise _bad(f"a {preset.width_px}x{preset.height_px} px photo does not fit a 6-inch print sheet")
        out["max_upscale"] = _float(params, "max_upscale", DEFAULT_MAX_UPSCALE, 1.0, 4.0)
        seg = str(params.get("segmenter", DEFAULT_SEGMENTER)).strip().lower()
        if seg not in SEGMENTER_NAMES:
            raise _bad(f"segmenter must be one of {', '.join(SEGMENTER_NAMES)}")
        out["segmenter"] = seg
        return out

    # --- models ---------------------------------------------------------------------
    def _models(self, ctx: HandlerContext, p: Mapping[str, Any]):
        try:
            det = make_detector("yunet", ctx.models_dir, min_score=0.5)
            sp = shape_predictor(ctx.models_dir)
            seg = make_segmenter(p["segmenter"], ctx.models_dir)
        except FacewardenError:
            raise
        except Exception as exc:  # noqa: BLE001 - no model, no photo
            raise ProcessingFailed("idphoto.models", f"idphoto models could not be loaded: {exc}") from exc
        return det, sp, seg

    def warm_up(self, ctx: HandlerContext, params: Mapping[str, Any]) -> None:
        p = self.validate_params(params)
        det, _sp, seg = self._models(ctx, p)
        blank = np.full((256, 256, 3), 127, np.uint8)
        det.detect(blank)
        seg.segment(blank)

    # --- geometry -------------------------------------------------------------------
    def _faces(self, det, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        f = min(1.0, DETECT_SIDE / max(h, w))
        small = rgb if f >= 1.0 else cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        try:
            faces = det.detect(small)
        except FacewardenError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("detector.error", f"face detection failed: {type(exc).__name__}") from exc
        faces = [Face(x.x / f, x.y / f, x.w / f, x.h / f, x.score) for x in faces if x.score >= MIN_SCORE]
        return sorted(faces, key=lambda x: x.w * x.h, reverse=True)

    @staticmethod
    def _yaw(eyes: EyeLandmarks) -> float:
        (lx, ly), (rx, ry) = eyes.left_eye, eyes.right_eye
        mx, my = eyes.eye_mid
        d = eyes.eye_distance
        ux, uy = (rx - lx) / d, (ry - ly) / d
        return float(((eyes.nose[0] - mx) * ux + (eyes.nose[1] - my) * uy) / d)

    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult:
        p = self.validate_params(params)
        preset = parse_size(p["size"])
        bg = parse_colour(p["background"])
        det, sp, seg = self._models(ctx, p)
        rgb = image.rgb
        H, W = rgb.shape[:2]
        t0 = time.perf_counter()

        faces = self._faces(det, rgb)
        if not faces:
            raise InputRejected("face.none", "no face was found: use a portrait where one person faces the camera")
        face = faces[0]
        others = [f for f in faces[1:] if f.w >= SECOND_FACE_RATIO * face.w]
        if others:
            raise InputRejected("face.multiple",
                                f"{1 + len(others)} faces were found: an ID photo needs a portrait of one person alone")
        eyes = sp.eyes(rgb, face)
        iod = eyes.eye_distance
        if iod < MIN_EYE_DISTANCE_PX:
            raise InputRejected("face.too_small",
                                f"the face is too small ({round(face.w)} px wide) for a {preset.label} photo: "
                                "take the portrait closer or at a higher resolution")
        roll = eyes.roll_deg
        yaw = self._yaw(eyes)
        if abs(yaw) > MAX_YAW or abs(roll) > MAX_ROLL_DEG or not 0.25 <= iod / face.w <= 0.65:
            raise InputRejected("face.turned",
                                "the head is turned or tilted too far: the person must look straight at the camera")
        # Face too close to an edge: the sides of the face and the chin must be in the picture.
        mx, my = 0.12 * face.w, 0.12 * face.h
        if face.x - mx < 0 or face.x + face.w + mx > W or face.y + face.h + my > H or face.y < 0:
            raise InputRejected("face.at_edge",
                                "the face is too close to the edge of the picture to crop an ID photo: "
                                "use a portrait with space around the head and shoulders")
        t1 = time.perf_counter()

        # Segment a window around the face: the models see the person larger, and less clutter.
        x0, x1 = max(0, int(face.x - 2.0 * face.w)), min(W, int(face.x + 3.0 * face.w))
        y0, y1 = max(0, int(face.y - 1.6 * face.h)), min(H, int(face.y + 3.0 * face.h))
        region = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        try:
            prob = seg.segment(region)
        except FacewardenError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("segmenter.error", f"segmentation failed: {type(exc).__name__}") from exc
        t2 = time.perf_counter()
        alpha = self._person_alpha(prob, face, x0, y0)

        # Level the eyes: rotate about the eye midpoint, in region coordinates.
        emx, emy = eyes.eye_mid[0] - x0, eyes.eye_mid[1] - y0
        rot = cv2.getRotationMatrix2D((emx, emy), roll, 1.0)
        rh, rw = alpha.shape
        levelled = cv2.warpAffine(alpha, rot, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        crown_y = self._crown(levelled, emx, emy, iod, touches_top=(y0 == 0))
        chin_src = np.array([face.x + face.w / 2 - x0, face.y + face.h * (1 + CHIN_FROM_BOX) - y0, 1.0])
        chin_y = float((rot @ chin_src)[1])
        head_px = chin_y - crown_y
        if not 0.9 * face.h <= head_px <= 2.6 * face.h:
            raise InputRejected("segment.failed",
                                "the person could not be separated from the background around the head: "
                                "use a portrait against a plain, contrasting background")
        out_w, out_h = preset.width_px, preset.height_px
        s = preset.head * out_h / head_px
        if s > p["max_upscale"]:
            raise InputRejected("face.too_small",
                                f"the face is too small for a {preset.label} photo (it would need {s:.1f}x "
                                f"enlargement, the limit is {p['max_upscale']:g}x): take the portrait closer "
                                "or at a higher resolution")
        crown_out = preset.top * out_h
        to_out = np.array([[s, 0.0, out_w / 2 - s * emx], [0.0, s, crown_out - s * crown_y]])
        m = _compose(to_out, rot)
        # Where the output window runs past the bottom of the picture, continue the shoulders
        # downwards rather than leaving a straight cut into background.
        photo, soft, padded = self._warp(region, alpha, m, out_w, out_h, (x0, y0, W, H), feather=p["feather"])
        out = self._composite(photo, soft, bg)
        geo = Geometry(roll, yaw, s, crown_y, chin_y, (emx, emy), padded)
        t3 = time.perf_counter()

        fmt = p["format"]
        data, quality = self._encode(out, fmt, preset.dpi, p["max_kb"])
        outputs = [Output(data=data, extension=FORMATS[fmt][0], content_type=FORMATS[fmt][1])]
        copies = 0
        if p["sheet"]:
            sheet, copies = self._sheet(out)
            sdata, _ = self._encode(sheet, fmt, preset.dpi, None)
            outputs.append(Output(data=sdata, extension=FORMATS[fmt][0], content_type=FORMATS[fmt][1],
                                  suffix="-sheet"))
        t4 = time.perf_counter()
        timing = {"detect_ms": round((t1 - t0) * 1000, 1), "segment_ms": round((t2 - t1) * 1000, 1),
                  "compose_ms": round((t3 - t2) * 1000, 1), "encode_ms": round((t4 - t3) * 1000, 1)}
        log.info("idphoto.done", preset=preset.name, segmenter=seg.name, **timing)
        models = {mid.name: mid for mid in [*det.model_ids(), *sp.model_ids(), *seg.model_ids()]}
        facts = {
            "preset": preset.as_facts(),
            "background": p["background"],
            "format": fmt,
            "head": {
                "roll_deg": round(geo.roll_deg, 2),
                "yaw": round(geo.yaw, 3),
                "scale": round(geo.scale, 4),
                "head_ratio": round(preset.head, 4),
                "top_ratio": round(preset.top, 4),
                "eye_distance_px": round(iod * s, 1),
                "padded": geo.padded,
            },
            "segmenter": seg.name,
            "bytes": len(data),
            **({"jpeg_quality": quality} if fmt == "jpeg" else {}),
            **({"sheet_copies": copies} if p["sheet"] else {}),
            **timing,
        }
        return HandlerResult(outputs=outputs, facts=facts, models=list(models.values()))

    # --- steps ----------------------------------------------------------------------
    @staticmethod
    def _person_alpha(prob: np.ndarray, face: Face, x0: int, y0: int) -> np.ndarray:
        """The soft mask of the person whose face we found, and nothing else."""
        hard = prob > 0.5
        n, labels = cv2.connectedComponents(hard.astype(np.uint8), connectivity=8)
        fx0, fy0 = int(face.x + 0.3 * face.w) - x0, int(face.y + 0.3 * face.h) - y0
        fx1, fy1 = int(face.x + 0.7 * face.w) - x0, int(face.y + 0.7 * face.h) - y0
        core = labels[max(0, fy0):max(0, fy1), max(0, fx0):max(0, fx1)]
        if n <= 1 or core.size == 0 or hard[max(0, fy0):max(0, fy1), max(0, fx0):max(0, fx1)].mean() < 0.5:
            raise InputRejected("segment.failed",
                                "the person could not be separated from the background: use a portrait "
                                "against a plain, contrasting background")
        ids = np.unique(core[core > 0])
        keep = fill_holes(np.isin(labels, ids))
        # Soft values only at the border of what we keep; stray blobs elsewhere go.
        grown = cv2.dilate(keep.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        return np.where(keep, np.maximum(prob, 0.5), np.where(grown, prob, 0.0)).astype(np.float32)

    @staticmethod
    def _crown(levelled: np.ndarray, emx: float, emy: float, iod: float, *, touches_top: bool) -> float:
        """Top of the head: the highest person pixel in a band over the eyes."""
        h, w = levelled.shape
        c0, c1 = max(0, int(emx - 0.6 * iod)), min(w, int(emx + 0.6 * iod) + 1)
        rows = max(1, min(h, int(emy)))
        band = levelled[:rows, c0:c1] > 0.5
        if band.size == 0 or not band.any():
            raise InputRejected("segment.failed",
                                "the top of the head could not be found: use a portrait against a plain, "
                                "contrasting background")
        tops = np.where(band.any(axis=0), band.argmax(axis=0), rows)
        crown = float(np.percentile(tops, 15))
        if crown <= 1.0 and touches_top:
            raise InputRejected("head.cut_off",
                                "the top of the head is cut off: use a portrait with space above the hair")
        return crown

    @staticmethod
    def _warp(region: np.ndarray, alpha: np.ndarray, m: np.ndarray, out_w: int, out_h: int,
              frame: tuple[int, int, int, int], *, feather: float) -> tuple[np.ndarray, np.ndarray, bool]:
        x0, y0, W, H = frame
        rh, _rw = alpha.shape
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [out_w, 0, 1], [0, out_h, 1], [out_w, out_h, 1]], float) @ inv.T
        need_bottom = max(0, math.ceil(corners[:, 1].max()) - rh + 2)
        padded = bool(corners[:, 0].min() < -x0 or corners[:, 0].max() > W - x0 or corners[:, 1].min() < -y0
                      or corners[:, 1].max() > H - y0)
        if need_bottom:
            region = cv2.copyMakeBorder(region, 0, need_bottom, 0, 0, cv2.BORDER_REPLICATE)
            alpha = cv2.copyMakeBorder(alpha, 0, need_bottom, 0, 0, cv2.BORDER_REPLICATE)
        s = math.hypot(m[0, 0], m[0, 1])
        if s < 0.6:  # shrink most of the way with area averaging: warpAffine would alias
            f = min(1.0, 1.5 * s)
            region = cv2.resize(region, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            m = _compose(m, np.array([[1 / f, 0, 0], [0, 1 / f, 0]]))
        photo = cv2.warpAffine(region, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        soft = cv2.warpAffine(alpha, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        guide = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        radius = max(2, round(min(out_w, out_h) / 150))
        soft = guided_filter(guide, soft, radius, 1e-3)
        if feather > 0:
            soft = cv2.GaussianBlur(soft, (0, 0), feather)
        # Exact background where the mask says background: a portal checks corner pixels.
        soft = np.clip((soft - 0.04) / 0.92, 0.0, 1.0)
        return photo, soft.astype(np.float32), padded

    @staticmethod
    def _composite(photo: np.ndarray, soft: np.ndarray, bg: tuple[int, int, int]) -> np.ndarray:
        a = soft[..., None]
        out = photo.astype(np.float32) * a + np.array(bg, np.float32) * (1.0 - a)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    @staticmethod
    def _encode(rgb: np.ndarray, fmt: str, dpi: int, max_kb: int | None) -> tuple[bytes, int | None]:
        """Only pixels and the dpi are written: no EXIF, ICC, XMP or comments."""
        im = Image.fromarray(np.ascontiguousarray(rgb), "RGB")

        def jpeg(q: int, subsampling: int) -> bytes:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=q, subsampling=subsampling, optimize=True, dpi=(dpi, dpi))
            return buf.getvalue()

        if fmt == "png":
            buf = io.BytesIO()
            im.save(buf, "PNG", compress_level=6, dpi=(dpi, dpi))
            return buf.getvalue(), None
        data = jpeg(95, 0)
        if max_kb is None or len(data) <= max_kb * 1024:
            return data, 95
        lo, hi, best = 10, 94, None
        while lo <= hi:  # largest quality whose file fits
            q = (lo + hi) // 2
            d = jpeg(q, 2)
            if len(d) <= max_kb * 1024:
                best, lo = (d, q), q + 1
            else:
                hi = q - 1
        if best is None:
            raise InputRejected("output.too_large",
                                f"the photo cannot be made smaller than {max_kb} KB even at the lowest "
                                "quality: raise max_kb")
        return best

    @staticmethod
    def _sheet(photo: np.ndarray) -> tuple[np.ndarray, int]:
        h, w = photo.shape[:2]
        cols, rows = sheet_layout(w, h)
        sw, sh = SHEET_PX
        sheet = np.full((sh, sw, 3), 255, np.uint8)
        gw, gh = cols * w + (cols + 1) * SHEET_GAP, rows * h + (rows + 1) * SHEET_GAP
        ox, oy = (sw - gw) // 2, (sh - gh) // 2
        for r in range(rows + 1):  # cut lines run through the middle of each gap
            y = oy + r * (h + SHEET_GAP) + SHEET_GAP // 2
            sheet[y, ox:ox + gw] = SHEET_LINE
        for c in range(cols + 1):
            x = ox + c * (w + SHEET_GAP) + SHEET_GAP // 2
            sheet[oy:oy + gh, x] = SHEET_LINE
        for r in range(rows):
            for c in range(cols):
                x = ox + SHEET_GAP + c * (w + SHEET_GAP)
                y = oy + SHEET_GAP + r * (h + SHEET_GAP)
                sheet[y:y + h, x:x + w] = photo
        return sheet, cols * rows


register("idphoto", IdPhotoHandler)
