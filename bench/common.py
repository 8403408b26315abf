"""Shared pieces of the face benchmarks: ground truth, the hard variants, and the recall measure.

Ground truth is dlib's imglab annotation of 9 PASCAL VOC photos (``testing.xml`` +
``training.xml``, 43 faces). The photos are easy (faces of 37-109 px), so two harder
variants are built from them, deterministically:

- ``shrunk``: every photo scaled by one factor so that the median face is ~12 px (faces then
  span ~11-33 px, photos ~150 px wide). This is what a far group in a big photo looks like.
- ``canvas``: the shrunk photos pasted at random positions onto a neutral grey 1920x1080
  canvas (several canvases, each holding every shrunk photo once): the same tiny faces, but
  now tiny *relative to the frame*, which is what defeats fixed-input models such as
  MediaPipe (192 px) and is the daemon's real workload size.

"Obscured" for a GT box = the share of its pixels inside the obscuring mask; a face counts
as found when that share is >= ``COVER`` (0.7). For facewarden the mask comes straight from
``face_mask`` (the exact pixels ``obscure_faces`` replaces); for deface it comes from deface's
own ``anonymize_frame`` drawn on a blank frame (see ``deface_compare.py``), so both sides are
measured the same way, without thresholding pixel differences (a blur of a flat patch
changes few pixel values yet hides it).
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PASCAL = DATA / "faces-pascal"
COVER = 0.7
SHRUNK_MEDIAN_FACE = 12.0
CANVAS_SIZE = (1920, 1080)
CANVAS_GREY = (128, 128, 128)
VARIANTS = ("pascal", "shrunk", "canvas")


@dataclass
class Sample:
    name: str
    rgb: np.ndarray
    #: Ground-truth face boxes (x, y, w, h) in pixels.
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


def load_pascal(root: Path = PASCAL) -> list[Sample]:
    """All annotated photos with their GT boxes (a photo listed in both files gets both sets)."""
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for xml in ("testing.xml", "training.xml"):
        for image in ET.parse(root / xml).getroot().iter("image"):
            lst = boxes.setdefault(image.get("file"), [])
            for b in image.iter("box"):
                if b.get("ignore") == "1":
                    continue
                lst.append((float(b.get("left")), float(b.get("top")),
                            float(b.get("width")), float(b.get("height"))))
    samples = []
    for name in sorted(boxes):
        with Image.open(root / name) as im:
            rgb = np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
        samples.append(Sample(name, rgb, boxes[name]))
    return samples


def median_face(samples: list[Sample]) -> float:
    return float(np.median([max(w, h) for s in samples for (_, _, w, h) in s.boxes]))


def shrink(samples: list[Sample], target: float = SHRUNK_MEDIAN_FACE) -> list[Sample]:
    """Scales every photo by one factor so the median GT face becomes ``target`` px."""
    f = target / median_face(samples)
    out = []
    for s in samples:
        h, w = s.rgb.shape[:2]
        size = (max(1, round(w * f)), max(1, round(h * f)))
        fx, fy = size[0] / w, size[1] / h
        rgb = cv2.resize(s.rgb, size, interpolation=cv2.INTER_AREA)
        out.append(Sample(f"{s.name}@{f:.2f}", rgb,
                          [(x * fx, y * fy, bw * fx, bh * fy) for x, y, bw, bh in s.boxes]))
    return out


def canvases(shrunk: list[Sample], n: int = 3, size: tuple[int, int] = CANVAS_SIZE,
             seed: int = 7) -> list[Sample]:
    """``n`` neutral canvases, each with every shrunk photo pasted once at a random,
    non-overlapping position (fixed seed: the same layout in every run)."""
    rnd = random.Random(seed)
    W, H = size
    out = []
    for i in range(n):
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:] = CANVAS_GREY
        boxes: list[tuple[float, float, float, float]] = []
        placed: list[tuple[int, int, int, int]] = []
        for s in shrunk:
            h, w = s.rgb.shape[:2]
            for _ in range(1000):
                x, y = rnd.randrange(0, W - w), rnd.randrange(0, H - h)
                if all(x + w + 8 <= px or px + pw + 8 <= x or y + h + 8 <= py or py + ph + 8 <= y
                       for px, py, pw, ph in placed):
                    break
            else:
                raise RuntimeError("could not place a photo on the canvas")
            placed.append((x, y, w, h))
            canvas[y:y + h, x:x + w] = s.rgb
            boxes.extend((bx + x, by + y, bw, bh) for bx, by, bw, bh in s.boxes)
        out.append(Sample(f"canvas{i}", canvas, boxes))
    return out


def variants(n_canvas: int = 3, face_px: float = SHRUNK_MEDIAN_FACE) -> dict[str, list[Sample]]:
    """``face_px`` moves the shrunk/canvas median face size, to see how much headroom there is."""
    pascal = load_pascal()
    small = shrink(pascal, face_px)
    return {"pascal": pascal, "shrunk": small, "canvas": canvases(small, n_canvas)}


def covered(mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Share of the GT box's pixels that are inside ``mask``."""
    h, w = mask.shape
    x, y, bw, bh = box
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(w, round(x + bw)), min(h, round(y + bh))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(mask[y0:y1, x0:x1].mean())


def score_masks(samples: list[Sample], masks: list[np.ndarray]) -> tuple[int, int, float]:
    """(found, total, obscured-area share) over a variant: found = GT boxes >= COVER covered."""
    found = total = 0
    area = pixels = 0
    for s, m in zip(samples, masks, strict=True):
        for b in s.boxes:
            total += 1
            found += covered(m, b) >= COVER
        area += int(m.sum())
        pixels += m.size
    return found, total, area / max(1, pixels)


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(wd) for c, wd in zip(r, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(["-" * wd for wd in widths]), *map(line, rows)])
