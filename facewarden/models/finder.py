"""One face finder for every handler: a pyramid of levels over two detector families, merged.

Why one component: anonymize, idphoto, enroll and verify each had their own detection path
(YuNet + MediaPipe, YuNet at 640 px, YuNet at full resolution), and each failed where the
others worked: a face filling a phone portrait was invisible to enroll/verify (larger than
YuNet's anchors), a clear profile was invisible to all of them (YuNet is a frontal model).
Here every handler asks the same finder, with a *policy* saying what it needs:

- ``anonymize`` (recall first): every level the time budget allows, low threshold, generous
  merge. A missed face is a leak; a blurred patch of wall is not.
- ``enroll`` (precision first): confident faces only, one clear subject expected.
- ``verify`` (balanced): the faces worth matching, found at every scale.
- ``idphoto``: one portrait face, with landmarks to level the eyes.

How a look is made (``plan``):

- YuNet runs on an image pyramid: the finest level is the image upscaled (small images, where
  faces fall under YuNet's ~10-px floor) or downscaled (huge images) to fit the policy's
  time budget; coarser levels follow, each ``step`` times smaller, down to ``coarse_side``
  px, so a face filling a 12 MP frame is seen at a size YuNet's anchors cover.
- CenterFace (anchor-free, the second family) runs on one level sized to its own time
  budget, plus a coarse one: it finds turned heads YuNet misses, and confirms YuNet's faces.
- MediaPipe (192-px input) looks at the whole frame once: a cheap third opinion on faces
  that fill the picture.

Scores of different models mean different things, so each is mapped onto one scale first
(``CALIBRATION``: the raw score that counts as 0.5), then detections of the same face (from
any level or model) are fused: the score is the noisy-OR of the best score per model (two models agreeing is
stronger evidence than one), boxes are averaged weighted by score, the
box and landmarks from the preferred family present (YuNet, else CenterFace, else MediaPipe:
YuNet and CenterFace give five real landmarks).

Fail closed: if any pass of a look fails, the whole look raises ``ProcessingFailed``; a
partial look is not a look.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facewarden.errors import FacewardenError, ProcessingFailed, UnknownBackend
from facewarden.models.detectors import backend, register_detector
from facewarden.models.protocols import Face, FaceDetector, ModelId

#: Estimated one-core cost of each model, ms per megapixel of the level it looks at
#: (this machine, idle: YuNet ~40 ms for a 1 MP level, CenterFace ~9x that; under load
#: both ~2.5x slower, the ratio holds). Budgets below are in these idle milliseconds.
MS_PER_MP = {"yunet": 40.0, "centerface": 360.0}
#: Raw score each model needs to count as 0.5 on the common scale (piecewise linear either
#: side). YuNet's own scale is the reference; the other knees were set by hand, not fitted,
#: from looking at the even fold of wider-dev (CenterFace's heat-map peaks run lower than
#: YuNet's scores on the same faces). A finer calibration is future work.
CALIBRATION = {"yunet": 0.5, "centerface": 0.4, "mediapipe": 0.6}
#: Whose box a fused face takes, in order of preference (see ``_Cluster.fuse``).
BOX_ORDER = ("yunet", "centerface", "mediapipe")
#: Partial-face boxes are only looked for among detections at least this wide (px): in
#: crowds, a small face half behind a nearer head is real (wider-dev even fold).
PARTIAL_MIN_PX = 64.0
#: Width (px, at CenterFace's level) from which a face needs a second family's confirmation.
CONFIRM_SEEN_PX = 32.0
#: Raw floor every pass is run at; policies threshold the calibrated, fused score.
RAW_FLOOR = {"yunet": 0.2, "centerface": 0.15, "mediapipe": 0.3}
#: ``Policy.min_finest`` makes a level of at most this many pixels: a 12 MP photo's 0.8x.
#: Larger photos (up to the 100 MP limit) get a level of this size, not 0.8x: at 0.8x a
#: 27 MP photo's look took 1.6 GB and 2.3 s.
FLOOR_LEVEL_PIXELS = 8_000_000
#: MediaPipe letterboxes its input to 192 px itself; it is handed a level no longer than
#: this (its own resize of a 12 MP frame cost 26 ms and aliases; a 1600-px level, ~5 ms).
MEDIAPIPE_SIDE = 1600
#: Images above this many pixels have their coarse levels made from finer levels, not from
#: the image (see ``Levels``); below it a direct resize costs a few ms and is the faithful one.
CASCADE_PIXELS = 4_000_000


@dataclass(frozen=True, slots=True)
class Policy:
    """What a handler needs from a look. Thresholds are on the calibrated scale."""

    name: str
    min_score: float
    #: Estimated one-core time (ms) the YuNet pyramid may spend: sets the finest level's
    #: size. 170 keeps a 12 MP photo at ~0.56x, where a 20-px face is still ~11 px.
    yunet_ms: float = 170.0
    #: Estimated one-core time (ms) of CenterFace's level (0 switches it off).
    centerface_ms: float = 100.0
    #: Finest YuNet level is at most this many times the image.
    max_upscale: float = 2.0
    #: ...and never smaller than this, whatever the budget: a 20-px face in a 12 MP frame is
    #: seen at 16 px, where YuNet's scores are steady (at the budget's 0.56x, 11 px, they
    #: swing between 0.2 and 0.9 from one scale to the next: bench/scale_sweep.py). So faces
    #: from 20 px up are looked for up to 12 MP (``FLOOR_LEVEL_PIXELS``); a look at a 12 MP
    #: photo costs ~0.1 s more.
    min_finest: float = 0.8
    #: Coarser levels go down until the long side is at most this (px).
    coarse_side: int = 160
    #: Scale ratio between neighbouring pyramid levels.
    step: float = 3.0
    #: CenterFace's level is never larger than the image times this.
    centerface_max_scale: float = 1.0
    #: Run MediaPipe once on the whole frame.
    mediapipe: bool = True
    #: Two detections are one face at this IoU (or when the smaller lies inside the larger,
    #: see ``_same_face``).
    merge_iou: float = 0.35
    #: How a fused face's box is drawn: "family" = from the preferred model family present
    #: (BOX_ORDER: consistent geometry for alignment), "all" = score-weighted mean of every
    #: member (wider where models disagree: the generous choice for obscuring).
    box_from: str = "family"
    #: Faces narrower than ``small_px`` need only ``small_min_score`` (when lower than
    #: ``min_score``): a false positive that small blurs next to nothing, a missed face
    #: that small is still a person.
    small_px: float = 0.0
    small_min_score: float = 1.0
    #: Faces narrower than this (px, in the image) are dropped.
    min_face: float = 0.0
    #: Faces at least this wide (px) must be found by two model families (0: off). Every
    #: family sees a real frontal face that large; one alone seeing it is how a waving hand
    #: becomes a "face" (a hand in identities-knn scored 0.76 with YuNet alone). The price:
    #: a large profile only CenterFace sees is not matched by verify (anonymize, which
    #: only asks a higher score of such faces, still obscures it).
    confirm_px: float = 0.0
    #: ...or, when one family alone finds it, have at least this score (above 1: never).
    confirm_score: float = 2.0

    def with_(self, **changes: Any) -> Policy:
        return replace(self, **changes)


POLICIES: dict[str, Policy] = {
    # Tuned on the even fold of wider-dev (bench/recall.py). min_score 0.25 everywhere found
    # 4 more faces under 10 px there but blurred 1.5x the area (false positives on small
    # photos looked at 2x); 0.2 for faces under 16 px only found 9 more (and 2 of 3 missed
    # atypical-pose faces) for +0.002 of area. CenterFace beyond 140 ms found nothing more.
    # YuNet's 130 ms (it was 170): a 1080p frame is looked at 1x, not 1.35x (the 1.18x the
    # budget gives is too close to 1x to find more), which takes a third off its look (308 ->
    # 208 ms on bench/recall.py's 1080p canvases, same 258/258 faces); a ~1 MP photo is
    # looked at 1.7x, not 2x (2 fewer faces under 10 px on the even fold, 78 -> 76 of 99).
    "anonymize": Policy("anonymize", min_score=0.3, yunet_ms=130.0, centerface_ms=140.0, max_upscale=2.0,
                        merge_iou=0.3, box_from="all", confirm_px=128.0, confirm_score=0.5,
                        small_px=16.0, small_min_score=0.2),
    "enroll": Policy("enroll", min_score=0.6, yunet_ms=170.0, centerface_ms=40.0, max_upscale=1.0,
                     centerface_max_scale=0.5, confirm_px=64.0),
    "verify": Policy("verify", min_score=0.6, yunet_ms=170.0, centerface_ms=40.0, max_upscale=1.5,
                     centerface_max_scale=0.75, confirm_px=64.0),
    "idphoto": Policy("idphoto", min_score=0.6, yunet_ms=170.0, centerface_ms=40.0, max_upscale=1.0,
                      centerface_max_scale=0.5, confirm_px=64.0),
}


def calibrated(model: str, raw: float) -> float:
    """Maps a model's raw score onto the common scale: ``CALIBRATION[model]`` -> 0.5."""
    knee = CALIBRATION[model]
    if raw <= knee:
        return 0.5 * raw / knee
    return min(1.0, 0.5 + 0.5 * (raw - knee) / (1.0 - knee))


@dataclass(frozen=True, slots=True)
class Pass:
    """One model looking at the image resized by ``scale`` (0 = MediaPipe's own resize)."""

    model: str
    scale: float


def plan(width: int, height: int, policy: Policy) -> list[Pass]:
    """The passes one look makes on a ``width`` x ``height`` image under ``policy``."""
    long_side = max(width, height)
    mp = width * height / 1e6
    passes: list[Pass] = []
    yunet_ms = policy.yunet_ms
    # Coarser levels add ~1/step^2 + 1/step^4 + ... of the finest level's cost.
    overhead = 1.0 / (1.0 - 1.0 / policy.step ** 2)
    top = min(policy.max_upscale, math.sqrt(yunet_ms / (MS_PER_MP["yunet"] * mp * overhead)))
    top = max(top, min(policy.min_finest, 1.0, math.sqrt(FLOOR_LEVEL_PIXELS / (width * height))))
    if 1.0 < top < 1.25:
        top = 1.0  # an upscale this small finds nothing the 1x level does not
    levels = [top]
    s = top / policy.step
    while s * long_side > policy.coarse_side:
        levels.append(s)
        s /= policy.step
    coarse = policy.coarse_side / long_side
    if coarse < levels[-1] / 1.5:
        levels.append(coarse)
    passes += [Pass("yunet", round(v, 4)) for v in levels if v * min(width, height) >= 32]
    if policy.centerface_ms > 0:
        cf_ms = policy.centerface_ms
        cf = min(policy.centerface_max_scale, math.sqrt(cf_ms / (MS_PER_MP["centerface"] * mp)))
        passes.append(Pass("centerface", round(cf, 4)))
        cf_coarse = 320 / long_side
        if cf_coarse < cf / 2:
            passes.append(Pass("centerface", round(cf_coarse, 4)))
    if policy.mediapipe:
        passes.append(Pass("mediapipe", 0.0))
    return passes


def _area(f: Face) -> float:
    return max(0.0, f.w) * max(0.0, f.h)


def _inter(a: Face, b: Face) -> float:
    x1, y1 = max(a.x, b.x), max(a.y, b.y)
    x2, y2 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _same_face(a: Face, b: Face, iou_thr: float) -> bool:
    """IoU over the threshold, or the smaller box mostly inside a larger one of similar
    size (one model's tight box inside another's loose one)."""
    inter = _inter(a, b)
    if inter <= 0:
        return False
    aa, ab = _area(a), _area(b)
    if inter / (aa + ab - inter) >= iou_thr:
        return True
    small, large = min(aa, ab), max(aa, ab)
    return inter / small >= 0.8 and small / large >= 0.25


@dataclass
class _Cluster:
    members: list[tuple[str, Face, float]]  # (model, face, calibrated score)
    box: Face

    def fuse(self, box_from: str = "family") -> Face:
        # The box (and landmarks) come from the first model family in BOX_ORDER present in
        # the cluster: models draw boxes of different shapes (CenterFace's are taller than
        # YuNet's), and what comes after (margins, dlib's alignment) is tuned to YuNet's.
        family = next(m for m in BOX_ORDER if any(mm == m for mm, _, _ in self.members))
        same = [(f, c) for m, f, c in self.members if m == family]
        boxes = same if box_from == "family" else [(f, c) for _, f, c in self.members]
        wsum = sum(c for _, c in boxes)
        x = sum(f.x * c for f, c in boxes) / wsum
        y = sum(f.y * c for f, c in boxes) / wsum
        w = sum(f.w * c for f, c in boxes) / wsum
        h = sum(f.h * c for f, c in boxes) / wsum
        best: dict[str, float] = {}
        for m, _, c in self.members:
            best[m] = max(best.get(m, 0.0), c)
        score = 1.0 - math.prod(1.0 - c for c in best.values())
        lm_src = max(same, key=lambda t: t[1])[0].landmarks
        return Face(x, y, w, h, min(1.0, score), lm_src, "+".join(sorted(best)))


class _Boxes:
    """Boxes (x0, y0, x1, y1) in one array, to find the few that overlap a new one without a
    Python loop over all of them: a 12 MP crowd photo gives ~500 candidates, and comparing
    each with every cluster in Python took ~80 ms of a ~550 ms look."""

    def __init__(self, capacity: int):
        self.xyxy = np.empty((max(1, capacity), 4))
        self.n = 0

    def add(self, f: Face) -> None:
        self.xyxy[self.n] = (f.x, f.y, f.x + f.w, f.y + f.h)
        self.n += 1

    def set(self, i: int, f: Face) -> None:
        self.xyxy[i] = (f.x, f.y, f.x + f.w, f.y + f.h)

    def overlapping(self, f: Face) -> np.ndarray:
        """Indices (ascending) of the boxes whose intersection with ``f`` has positive area:
        the same test as ``_inter(...) > 0``, so every pair it skips is one ``_same_face``
        and ``_part_of`` would reject anyway."""
        b = self.xyxy[:self.n]
        iw = np.minimum(b[:, 2], f.x + f.w) - np.maximum(b[:, 0], f.x)
        ih = np.minimum(b[:, 3], f.y + f.h) - np.maximum(b[:, 1], f.y)
        return np.flatnonzero((iw > 0) & (ih > 0))


def fuse(found: Iterable[tuple[str, Face]], iou_thr: float, box_from: str = "family") -> list[Face]:
    """Weighted box fusion of detections from every pass (model name, face)."""
    cands = sorted(((m, f, calibrated(m, f.score)) for m, f in found if f.w > 0 and f.h > 0),
                   key=lambda t: t[2], reverse=True)
    clusters: list[_Cluster] = []
    boxes = _Boxes(len(cands))
    for m, f, c in cands:
        # The first cluster (in the order they were made) that is the same face.
        i = next((int(i) for i in boxes.overlapping(f) if _same_face(clusters[i].box, f, iou_thr)), None)
        if i is None:
            clusters.append(_Cluster([(m, f, c)], f))
            boxes.add(f)
        else:
            target = clusters[i]
            target.members.append((m, f, c))
            target.box = target.fuse(box_from)
            boxes.set(i, target.box)
    return _drop_nested([cl.fuse(box_from) for cl in clusters])


def _part_of(f: Face, k: Face) -> bool:
    """True when ``f`` is a part of the better-scored face ``k`` (see ``_drop_nested``)."""
    af, ak, inter = _area(f), _area(k), _inter(f, k)
    cx, cy = f.x + f.w / 2, f.y + f.h / 2
    nested = (ak > 2.0 * af and inter >= 0.8 * af and abs(cx - (k.x + k.w / 2)) <= 0.35 * k.w
              and abs(cy - (k.y + k.h / 2)) <= 0.35 * k.h)
    partial = f.w >= PARTIAL_MIN_PX and k.score >= f.score + 0.3 and inter >= 0.5 * af
    return nested or partial


def _drop_nested(faces: list[Face]) -> list[Face]:
    """Drops detections that are parts of a better-scored face, not faces of their own:

    - a small box in the central part of a larger face (an eye or the mouth seen as a face
      at a finer pyramid level; the larger face's mask covers it anyway);
    - a box (>= PARTIAL_MIN_PX) lying half or more on a much more confident face: YuNet's
      anchors, shown a face larger than they cover at a fine level, answer with partial
      boxes (forehead and one eye, chin and collar) at low scores.
    """
    kept: list[Face] = []
    boxes = _Boxes(len(faces))
    for f in sorted(faces, key=lambda f: f.score, reverse=True):
        if not any(_part_of(f, kept[int(i)]) for i in boxes.overlapping(f)):
            kept.append(f)
            boxes.add(f)
    return kept


class Levels:
    """The image at every scale a look asks for, each level made once, from the smallest
    level already made that is at least as large: a 12 MP frame is shrunk once, and the
    coarse levels come from the fine ones, not again from 12 MP (~100 ms of a look's
    ~430 ms). Upscaled levels are made from the image itself. YuNet and CenterFace only
    take their levels from here above ``CASCADE_PIXELS`` (see ``FaceFinder.find``); on
    smaller images each resizes for itself, as every constant here was tuned with."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self._made: dict[tuple[int, int], np.ndarray] = {(rgb.shape[1], rgb.shape[0]): rgb}

    def at(self, scale: float) -> tuple[np.ndarray, float, float]:
        """(level, sx, sy): the image resized by ``scale``, and the exact factors used."""
        h0, w0 = self.rgb.shape[:2]
        w, h = max(32, round(w0 * scale)), max(32, round(h0 * scale))
        img = self._made.get((w, h))
        if img is None:
            if w > w0 or h > h0:
                img = cv2.resize(self.rgb, (w, h), interpolation=cv2.INTER_LINEAR)
            else:
                src = min((a for (sw, sh), a in self._made.items() if sw >= w and sh >= h),
                          key=lambda a: a.shape[0] * a.shape[1])
                # Area averaging is what keeps a big reduction from aliasing, but on a 12 MP
                # source it costs ~80 ms against ~13 for bilinear; a reduction by less than
                # 2x aliases little, so it takes the bilinear one.
                interp = cv2.INTER_AREA if w < src.shape[1] / 2 else cv2.INTER_LINEAR
                img = cv2.resize(src, (w, h), interpolation=interp)
            self._made[(w, h)] = img
        return img, w / w0, h / h0


def _unscaled(faces: list[Face], sx: float, sy: float) -> list[Face]:
    """Faces found on a level resized by (sx, sy), in the image's own pixels."""
    if sx == 1.0 and sy == 1.0:
        return faces
    return [replace(f, x=f.x / sx, y=f.y / sy, w=f.w / sx, h=f.h / sy,
                    landmarks=tuple((px / sx, py / sy) for px, py in f.landmarks)) for f in faces]


class FaceFinder:
    """Finds faces under a policy; models load lazily, once, and are shared by policies."""

    def __init__(self, models_dir: Path, *, threads: int = 1):
        self.models_dir = Path(models_dir)
        self.threads = threads
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _model(self, name: str) -> Any:
        with self._lock:
            m = self._models.get(name)
            if m is None:
                m = self._models[name] = self._build(name)
            return m

    def _build(self, name: str) -> Any:
        return backend(name, self.models_dir, min_score=RAW_FLOOR[name], threads=self.threads)

    def model_ids(self, policy: Policy | str | None = None) -> list[ModelId]:
        p = resolve(policy)
        names = ["yunet"] + (["centerface"] if p.centerface_ms > 0 else []) + (
            ["mediapipe"] if p.mediapipe else [])
        return [mid for n in names for mid in self._model(n).model_ids()]

    def warm_up(self, policy: Policy | str | None = None) -> None:
        self.find(np.full((256, 256, 3), 127, np.uint8), policy)

    def find(self, rgb: np.ndarray, policy: Policy | str | None = "anonymize") -> list[Face]:
        """Every face ``policy`` accepts in the RGB image, best first.

        Raises ``ProcessingFailed`` when any pass could not look (fail closed)."""
        p = resolve(policy)
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ProcessingFailed("detector.bad_input", "detector needs an RGB uint8 image", retryable=False)
        h, w = rgb.shape[:2]
        found: list[tuple[str, Face]] = []
        passes = plan(w, h, p)
        levels = Levels(rgb)
        for ps in passes:
            try:
                model = self._model(ps.model)
                if ps.model == "mediapipe":
                    img, sx, sy = levels.at(min(1.0, MEDIAPIPE_SIDE / max(w, h)))
                    faces = _unscaled(model.detect(img), sx, sy)
                elif w * h > CASCADE_PIXELS:
                    faces = model.detect_resized(*levels.at(ps.scale))
                else:
                    faces = model.detect_at(rgb, ps.scale)
            except FacewardenError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "did not look"
                raise ProcessingFailed("detector.error",
                                       f"face detection ({ps.model}) failed: {type(exc).__name__}") from exc
            found.extend((ps.model, f) for f in faces)
        small = min(p.min_score, p.small_min_score)
        # A second family can only confirm a face it could see: CenterFace's level must show
        # it at CONFIRM_SEEN_PX or more (in a 12 MP frame its level is ~0.1x: an 80-px face
        # there is YuNet's alone to find).
        cf_scale = max((ps.scale for ps in passes if ps.model == "centerface"), default=0.0)
        faces = [f for f in fuse(found, p.merge_iou, p.box_from)
                 if f.score >= (small if f.w < p.small_px else p.min_score) and f.w >= p.min_face
                 and not (p.confirm_px and f.w >= p.confirm_px and f.w * cf_scale >= CONFIRM_SEEN_PX
                          and "+" not in f.source and f.score < p.confirm_score)]
        return sorted(faces, key=lambda f: f.score, reverse=True)


def resolve(policy: Policy | str | None) -> Policy:
    if policy is None:
        return POLICIES["anonymize"]
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]
    except KeyError:
        raise UnknownBackend("policy", str(policy), sorted(POLICIES)) from None


class PolicyDetector:
    """The finder under one policy, as a ``FaceDetector`` (what handlers and benches hold)."""

    def __init__(self, finder: FaceFinder, policy: Policy, name: str | None = None):
        self.finder = finder
        self.policy = policy
        self.name = name or f"finder-{policy.name}"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.finder.find(rgb, self.policy)

    def model_ids(self) -> list[ModelId]:
        return self.finder.model_ids(self.policy)


_FINDERS: dict[str, FaceFinder] = {}
_FINDERS_LOCK = threading.Lock()


def get_finder(models_dir: Path) -> FaceFinder:
    """The process's finder for a models directory (models load once per process)."""
    key = str(Path(models_dir).resolve())
    with _FINDERS_LOCK:
        f = _FINDERS.get(key)
        if f is None:
            f = _FINDERS[key] = FaceFinder(Path(models_dir))
        return f


def _register_policies() -> None:
    for pname in POLICIES:
        dname = "auto" if pname == "anonymize" else f"finder-{pname}"

        def build(models_dir: Path, *, min_score: float | None = None, _p: str = pname,
                  _n: str = dname) -> FaceDetector:
            pol = POLICIES[_p] if min_score is None else POLICIES[_p].with_(min_score=min_score)
            return PolicyDetector(get_finder(models_dir), pol, _n)

        register_detector(dname, {"min_score"}, f"FaceFinder, {pname} policy")(build)


_register_policies()
