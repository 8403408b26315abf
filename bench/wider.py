"""wider-dev (WIDER FACE val photos with official boxes, read from ../shared, never copied):
loading, the two folds, and recall by face-size bucket and by pose.

The measure is the pixel one of bench/common.py: a GT face counts as found when >= COVER
(70%) of its box lies inside the obscuring mask. Boxes WIDER flags invalid are neither hits
nor misses. Folds: photos sorted by file name; even-indexed ones are the tuning fold (every
constant of facewarden/models/finder.py was chosen on it), odd-indexed ones are held out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from bench.common import COVER, DATA, covered

WIDER = DATA / "wider-dev"
#: Face-width buckets (px): lower bounds, the last open-ended.
BUCKETS = ((0, 10), (10, 16), (16, 32), (32, 64), (64, 128), (128, 10**9))
BUCKET_NAMES = ("<10", "10-16", "16-32", "32-64", "64-128", ">=128")


@dataclass
class WiderSample:
    name: str
    rgb: np.ndarray
    boxes: list[tuple[float, float, float, float]]
    pose: list[str]
    ignore: list[tuple[float, float, float, float]] = field(default_factory=list)
    fold: str = "even"
    #: WIDER's occlusion label per box: 0 none, 1 partial, 2 heavy.
    occlusion: list[int] = field(default_factory=list)


def load_wider() -> list[WiderSample]:
    gt = json.loads((WIDER / "gt.json").read_text())
    out = []
    for i, im in enumerate(sorted(gt["images"], key=lambda x: x["file"])):
        with Image.open(WIDER / im["file"]) as pic:
            rgb = np.ascontiguousarray(np.asarray(pic.convert("RGB")))
        occlusion = [o for o, bad in zip(im["occlusion_official_order"], im["invalid_official_order"], strict=True)
                     if not bad]
        if len(occlusion) != len(im["boxes"]):
            raise SystemExit(f"{im['file']}: occlusion labels do not match the boxes")
        out.append(WiderSample(im["file"].rsplit("/", 1)[-1], rgb, [tuple(b) for b in im["boxes"]],
                               list(im["pose"]), [tuple(b) for b in im["ignore"]],
                               "even" if i % 2 == 0 else "odd", occlusion))
    return out


def bucket_of(box: tuple[float, float, float, float]) -> int:
    w = box[2]
    return next(i for i, (lo, hi) in enumerate(BUCKETS) if lo <= w < hi)


@dataclass
class Tally:
    """Found / total per bucket and per pose, and the obscured share of the pictures."""

    found: np.ndarray = field(default_factory=lambda: np.zeros(len(BUCKETS), int))
    total: np.ndarray = field(default_factory=lambda: np.zeros(len(BUCKETS), int))
    pose_found: dict[str, int] = field(default_factory=lambda: {"typical": 0, "atypical": 0})
    pose_total: dict[str, int] = field(default_factory=lambda: {"typical": 0, "atypical": 0})
    area: int = 0
    pixels: int = 0
    #: Faces >= 16 px not heavily occluded (WIDER occlusion < 2): found, total.
    visible16: list[int] = field(default_factory=lambda: [0, 0])
    misses: list[tuple[str, tuple, float, int]] = field(default_factory=list)

    def add(self, s: WiderSample, mask: np.ndarray) -> None:
        for box, pose, occl in zip(s.boxes, s.pose, s.occlusion, strict=True):
            b = bucket_of(box)
            hit = covered(mask, box) >= COVER
            if box[2] >= 16 and occl < 2:
                self.visible16[0] += hit
                self.visible16[1] += 1
            self.total[b] += 1
            self.found[b] += hit
            self.pose_total[pose] += 1
            self.pose_found[pose] += hit
            if not hit:
                self.misses.append((s.name, box, covered(mask, box), occl))
        self.area += int(mask.sum())
        self.pixels += mask.size

    def row(self) -> list[str]:
        cells = [f"{f}/{t}" if t else "-" for f, t in zip(self.found, self.total, strict=True)]
        ge16 = self.found[2:].sum() / max(1, self.total[2:].sum())
        allr = self.found.sum() / max(1, self.total.sum())
        aty = f"{self.pose_found['atypical']}/{self.pose_total['atypical']}"
        vis = f"{self.visible16[0]}/{self.visible16[1]}"
        return [*cells, f"{ge16:.3f}", vis, aty, f"{allr:.3f}", f"{self.area / max(1, self.pixels):.3f}"]


#: ">=16 vis": faces >= 16 px that WIDER does not flag as heavily occluded.
HEADER = [*BUCKET_NAMES, ">=16 rec", ">=16 vis", "atypical", "all rec", "area"]


def atypical_boxes(samples: list[WiderSample]) -> set[tuple[str, tuple]]:
    return {(s.name, b) for s in samples for b, p in zip(s.boxes, s.pose, strict=True) if p == "atypical"}
