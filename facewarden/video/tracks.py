"""Linking per-frame detections into tracks, and the boxes that cover each track.

A detector misses a face now and then (motion blur, a turned head, a hand in front). A
face missed for one frame is a face shown for one frame, so each track is obscured over
its whole extent: gaps between two detections are filled by interpolating the boxes
(grown a little with the distance to the nearest real detection), and every track is
extended by ``pad`` frames before its first and after its last detection. Association
is greedy on IoU, with a centre-distance fallback for small fast faces whose boxes no
longer overlap from one frame to the next.

Only boxes are kept (five floats per face per frame), never pixels, so memory stays small
in the video's length.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field

#: (x, y, w, h, score) in upright-frame pixels.
Box = tuple[float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class TrackParams:
    #: Frames a track may go undetected and still continue (gaps up to this are filled).
    max_gap: int = 8
    #: Frames obscured before a track's first and after its last detection.
    pad: int = 3
    #: Minimum IoU to continue a track...
    min_iou: float = 0.1
    #: ...or a centre distance up to this many face sizes per frame elapsed.
    centre_factor: float = 0.6
    #: Growth of a filled or padded box per frame away from a real detection (fraction of
    #: its size per side), to absorb motion the detector did not see.
    grow_per_frame: float = 0.04
    max_grow: float = 0.3


@dataclass(slots=True)
class Track:
    id: int
    points: list[tuple[int, Box]] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.points[0][0]

    @property
    def last(self) -> int:
        return self.points[-1][0]


def iou(a: Box, b: Box) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _centre_distance(a: Box, b: Box) -> float:
    return math.hypot(a[0] + a[2] / 2 - b[0] - b[2] / 2, a[1] + a[3] / 2 - b[1] - b[3] / 2)


class Tracker:
    """Online linking, frame by frame (frames must arrive in order, gaps allowed)."""

    def __init__(self, params: TrackParams | None = None):
        self.params = params or TrackParams()
        self.tracks: list[Track] = []
        self._active: list[Track] = []
        self.frames_with_detections = 0

    def add(self, frame: int, boxes: list[Box]) -> None:
        p = self.params
        if boxes:
            self.frames_with_detections += 1
        self._active = [t for t in self._active if frame - t.last <= p.max_gap + 1]
        pairs = []
        for ti, t in enumerate(self._active):
            last = t.points[-1][1]
            gap = frame - t.last
            size = max(last[2], last[3], 1.0)
            for di, b in enumerate(boxes):
                ov = iou(last, b)
                dist = _centre_distance(last, b)
                if ov >= p.min_iou or dist <= p.centre_factor * size * gap:
                    pairs.append((-ov, dist / size, ti, di))
        pairs.sort()
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            self._active[ti].points.append((frame, boxes[di]))
        for di, b in enumerate(boxes):
            if di not in used_d:
                t = Track(len(self.tracks), [(frame, b)])
                self.tracks.append(t)
                self._active.append(t)


def _grown(b: Box, frames_away: int, p: TrackParams) -> Box:
    g = min(p.max_grow, p.grow_per_frame * frames_away)
    return (b[0] - b[2] * g, b[1] - b[3] * g, b[2] * (1 + 2 * g), b[3] * (1 + 2 * g), b[4])


def _lerp(a: Box, b: Box, t: float) -> Box:
    return (*(a[i] + (b[i] - a[i]) * t for i in range(4)), max(a[4], b[4]))  # type: ignore[return-value]


def _velocity(a: tuple[int, Box], b: tuple[int, Box]) -> tuple[float, float]:
    """Centre motion per frame from a to b (frames may be apart)."""
    (fa, ba), (fb, bb) = a, b
    df = fb - fa
    if df == 0:
        return 0.0, 0.0
    return ((bb[0] + bb[2] / 2 - ba[0] - ba[2] / 2) / df, (bb[1] + bb[3] / 2 - ba[1] - ba[3] / 2) / df)


def _moved(b: Box, v: tuple[float, float], k: int) -> Box:
    """The box carried on for k frames at velocity v (pads follow a moving face)."""
    return (b[0] + v[0] * k, b[1] + v[1] * k, b[2], b[3], b[4])


def covering_boxes(tracks: list[Track], n_frames: int, params: TrackParams | None = None
                   ) -> dict[int, list[Box]]:
    """Frame index -> boxes to obscure in that frame (frames without any are absent)."""
    p = params or TrackParams()
    out: dict[int, list[Box]] = defaultdict(list)
    last_frame = max(0, n_frames - 1) if n_frames else None
    for t in tracks:
        pts = t.points
        for (f0, b0), (f1, b1) in itertools.pairwise(pts):
            out[f0].append(b0)
            span = f1 - f0
            for f in range(f0 + 1, f1):
                away = min(f - f0, f1 - f)
                out[f].append(_grown(_lerp(b0, b1, (f - f0) / span), away, p))
        out[pts[-1][0]].append(pts[-1][1])
        if len(pts) > 1:
            v_in, v_out = _velocity(pts[0], pts[1]), _velocity(pts[-2], pts[-1])
        else:
            v_in = v_out = (0.0, 0.0)
        for k in range(1, p.pad + 1):
            before, after = t.first - k, t.last + k
            if before >= 0:
                out[before].append(_grown(_moved(pts[0][1], v_in, -k), k, p))
            if last_frame is None or after <= last_frame:
                out[after].append(_grown(_moved(pts[-1][1], v_out, k), k, p))
    return {f: merge_boxes(b) for f, b in out.items()}


def _overlapping(k: list[float], b: list[float], min_iou: float, min_containment: float) -> bool:
    x1, y1 = max(k[0], b[0]), max(k[1], b[1])
    x2, y2 = min(k[0] + k[2], b[0] + b[2]), min(k[1] + k[3], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    small = min(k[2] * k[3], b[2] * b[3])
    union = k[2] * k[3] + b[2] * b[3] - inter
    return union > 0 and (inter / union >= min_iou or (small > 0 and inter / small >= min_containment))


def merge_boxes(boxes: list[Box], min_iou: float = 0.4, min_containment: float = 0.7) -> list[Box]:
    """Replaces boxes that mostly overlap (a track's detection and a neighbour's padded copy
    of the same face) by their union, until none do: the covered area only grows, and each
    face is blurred once instead of several times."""
    kept = [list(b) for b in boxes]
    merged = True
    while merged and len(kept) > 1:
        merged = False
        kept.sort(key=lambda b: b[2] * b[3], reverse=True)
        out: list[list[float]] = []
        for b in kept:
            for k in out:
                if _overlapping(k, b, min_iou, min_containment):
                    ux0, uy0 = min(k[0], b[0]), min(k[1], b[1])
                    ux1, uy1 = max(k[0] + k[2], b[0] + b[2]), max(k[1] + k[3], b[1] + b[3])
                    k[:] = [ux0, uy0, ux1 - ux0, uy1 - uy0, max(k[4], b[4])]
                    merged = True
                    break
            else:
                out.append(b)
        kept = out
    return [tuple(k) for k in kept]  # type: ignore[misc]
