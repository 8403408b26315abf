"""Face detector registry and factory, and the wrappers that make backends find small faces.

Every backend registers itself in its own file (``register_detector``), with its pinned
model entry beside it; ``make_detector`` builds one by name, once per process, and an
unknown name raises ``UnknownBackend`` listing the known ones. Registered names:

- ``"auto"`` (the default): the FaceFinder's ``anonymize`` policy (finder.py): a YuNet
  pyramid, CenterFace and MediaPipe, fused. ``"finder-enroll"``, ``"finder-verify"``,
  ``"finder-idphoto"``: the same finder under the other handlers' policies.
- ``"yunet"`` / ``"yunet-native"`` / ``"yunet-pyramid"``: single YuNet passes (detect_yunet*.py).
- ``"centerface"``: one CenterFace pass (detect_centerface.py).
- ``"mediapipe"`` / ``"mediapipe-tiled"``: MediaPipe full range, whole frame or tiles.
- ``"ensemble"``: YuNet 1x + MediaPipe full frame by NMS, the default before the finder,
  kept so benches can compare against it.

A missed face is a privacy leak while a false positive is a blurred patch of wall, so the
defaults lean to low score thresholds. Detectors are cached per process: models load once.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facewarden.errors import ProcessingFailed, UnknownBackend
from facewarden.models.protocols import Face, FaceDetector, ModelId

#: Settings of the "ensemble" detector (YuNet + MediaPipe, the default before FaceFinder),
#: picked from bench/recall.py figures (one core, 2026-11-21):
#:
#: - YuNet at 1x does the work: with the handler's margin floor it covers 43/43 PASCAL faces,
#:   43/43 on the same photos shrunk to a 12-px median face and 258/258 on 1080p canvases of
#:   them (onnxruntime: ~50-90 ms per 1080p frame, ~4 ms per 500x375 photo; the native
#:   libfacedetection run of the same weights took ~320 ms and ~20 ms).
#: - MediaPipe on the full frame costs ~3 ms and is the second opinion for what YuNet's
#:   anchors cover worst: very large and turned faces (its 192-px input sees a close-up face
#:   whole; it found every face on the portrait photos in ../shared/data).
#: - The upscaled YuNet level (``max_upscale`` > 1) and MediaPipe tiles (``tile`` > 0) found
#:   no face on any variant that the two passes above missed, while costing 4-10x the time on
#:   small photos (a 3x level on a 500x375 photo adds ~75 ms) and, for tiles, adding false
#:   positives on portraits; they stay available for callers that want them.
AUTO_DEFAULTS: dict[str, Any] = {
    # Same as the anonymize handler's default min_score (see DEFAULT_MIN_SCORE there).
    "yunet_min_score": 0.3,
    "mediapipe_min_score": 0.3,
    "full_frame": True,
    "pixel_budget": 2_000_000,
    "max_upscale": 1.0,
    "tile": 0,
    "tile_overlap": 0.25,
    "max_tiles": 40,
}


def iou(a: Face, b: Face) -> float:
    x1, y1 = max(a.x, b.x), max(a.y, b.y)
    x2, y2 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def nms(faces: Sequence[Face], threshold: float = 0.4) -> list[Face]:
    """Greedy NMS: merges duplicates found by several passes, keeping the best-scored box."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(iou(f, k) < threshold for k in kept):
            kept.append(f)
    return kept


def _shift(face: Face, dx: float, dy: float, s: float = 1.0) -> Face:
    return Face(face.x / s + dx, face.y / s + dy, face.w / s, face.h / s, face.score,
                tuple((x / s + dx, y / s + dy) for x, y in face.landmarks))


class TiledDetector:
    """Runs a detector over overlapping square tiles: for a model with a fixed small input
    (MediaPipe: 192 px), a tile is a zoom, so faces small in the frame become findable."""

    def __init__(self, inner: FaceDetector, *, tile: int = 256, overlap: float = 0.25,
                 max_tiles: int = 40):
        if tile < 64 or not 0.0 <= overlap < 0.9 or max_tiles < 1:
            raise ValueError("tile must be >= 64, overlap within [0, 0.9), max_tiles >= 1")
        self.inner = inner
        self.name = f"{inner.name}-tiled"
        self.tile = tile
        self.overlap = overlap
        self.max_tiles = max_tiles

    def model_ids(self) -> list[ModelId]:
        return self.inner.model_ids()

    def _grid(self, w: int, h: int) -> tuple[int, list[tuple[int, int]]]:
        # Enlarge the tile until the grid fits max_tiles, so cost stays bounded on big images.
        tile = self.tile
        while True:
            t = min(tile, w, h) if min(w, h) < tile else tile
            step = max(1, int(t * (1.0 - self.overlap)))
            xs = list(range(0, max(1, w - t) + 1, step))
            ys = list(range(0, max(1, h - t) + 1, step))
            if xs[-1] + t < w:
                xs.append(w - t)
            if ys[-1] + t < h:
                ys.append(h - t)
            if len(xs) * len(ys) <= self.max_tiles:
                return t, [(x, y) for y in ys for x in xs]
            tile = int(tile * 1.25)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        t, origins = self._grid(w, h)
        found: list[Face] = []
        for x0, y0 in origins:
            crop = np.ascontiguousarray(rgb[y0:y0 + t, x0:x0 + t])
            found.extend(_shift(f, x0, y0) for f in self.inner.detect(crop))
        return nms(found)


class PyramidDetector:
    """YuNet at 1× plus one upscaled level, only when the upscaled image fits
    ``pixel_budget`` — i.e. on small images, where faces drop under YuNet's 10-px floor and
    the extra pass is cheap. Large frames get the single 1× pass (their cost is already
    ~0.5 s at 1080p)."""

    def __init__(self, base: FaceDetector, upscaled: type, models_dir: Path, *, min_score: float,
                 pixel_budget: int = 2_000_000, max_upscale: float = 3.0, min_upscale: float = 1.3):
        self.name = "yunet-pyramid"
        self.base = base
        self._make = lambda s: upscaled(models_dir, min_score=min_score, upscale=s)
        self._levels: dict[float, FaceDetector] = {}
        self.pixel_budget = pixel_budget
        self.max_upscale = max_upscale
        self.min_upscale = min_upscale

    def model_ids(self) -> list[ModelId]:
        return self.base.model_ids()

    def upscale_for(self, w: int, h: int) -> float:
        s = min(self.max_upscale, math.sqrt(self.pixel_budget / max(1, w * h)))
        return round(s, 2) if s >= self.min_upscale else 1.0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        found = list(self.base.detect(rgb))
        s = self.upscale_for(w, h)
        if s > 1.0:
            level = self._levels.get(s)
            if level is None:
                level = self._levels[s] = self._make(s)
            found.extend(level.detect(rgb))
        return nms(found)


class EnsembleDetector:
    """Union of several detectors merged by NMS. Any member failing fails the whole
    detection: a partial look is not a look."""

    def __init__(self, name: str, members: Sequence[FaceDetector]):
        self.name = name
        self.members = list(members)

    def model_ids(self) -> list[ModelId]:
        ids: dict[str, ModelId] = {}
        for m in self.members:
            for mid in m.model_ids():
                ids.setdefault(mid.name, mid)
        return list(ids.values())

    def detect(self, rgb: np.ndarray) -> list[Face]:
        found: list[Face] = []
        for m in self.members:
            found.extend(m.detect(rgb))
        return nms(found)


@dataclass(frozen=True, slots=True)
class DetectorBackend:
    """A detector name, how to build it, and the options it takes."""

    name: str
    build: Callable[..., FaceDetector]
    options: frozenset[str]
    summary: str


_BACKENDS: dict[str, DetectorBackend] = {}
#: Files that register detector backends (each one ``register_detector`` call per name).
DETECTOR_MODULES: tuple[str, ...] = (
    "facewarden.models.finder",
    "facewarden.models.detect_yunet",
    "facewarden.models.detect_yunet_native",
    "facewarden.models.detect_mediapipe",
    "facewarden.models.detect_centerface",
)


def register_detector(name: str, options: Iterable[str], summary: str
                      ) -> Callable[[Callable[..., FaceDetector]], Callable[..., FaceDetector]]:
    """Decorator a backend's own file puts on its builder ``build(models_dir, **options)``."""
    def deco(build: Callable[..., FaceDetector]) -> Callable[..., FaceDetector]:
        if name in _BACKENDS and _BACKENDS[name].build is not build:
            raise ValueError(f"detector {name!r} registered twice")
        _BACKENDS[name] = DetectorBackend(name, build, frozenset(options), summary)
        return build
    return deco


def _load() -> dict[str, DetectorBackend]:
    for module in DETECTOR_MODULES:
        importlib.import_module(module)
    return _BACKENDS


def names() -> tuple[str, ...]:
    """Every registered detector name, the default (``auto``) first."""
    known = _load()
    return tuple(sorted(known, key=lambda n: (n != "auto", n)))


def _lookup(name: str) -> DetectorBackend:
    known = _load()
    if name not in known:
        raise UnknownBackend("detector", name, names())
    return known[name]


def backend(name: str, models_dir: Path, **options: Any) -> FaceDetector:
    """A new (uncached) detector; ``make_detector`` is the cached way."""
    b = _lookup(name)
    unknown = set(options) - b.options
    if unknown:
        raise ValueError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    return b.build(Path(models_dir), **options)


@register_detector("ensemble", {"min_score", *AUTO_DEFAULTS},
                   "YuNet 1x + MediaPipe full frame, NMS (the default before FaceFinder)")
def _build_ensemble(models_dir: Path, **opts: Any) -> FaceDetector:
    from facewarden.models.detect_mediapipe import MediaPipeDetector
    from facewarden.models.detect_yunet import YuNetDetector

    cfg = {**AUTO_DEFAULTS, **opts}
    if "min_score" in cfg:  # one knob lowers or raises both members
        cfg["yunet_min_score"] = cfg["mediapipe_min_score"] = cfg.pop("min_score")
    yunet = YuNetDetector(models_dir, min_score=cfg["yunet_min_score"])
    members: list[FaceDetector] = [yunet]
    if cfg["max_upscale"] > 1.0:
        members = [PyramidDetector(yunet, YuNetDetector, models_dir, min_score=cfg["yunet_min_score"],
                                   pixel_budget=cfg["pixel_budget"], max_upscale=cfg["max_upscale"])]
    if cfg["full_frame"] or cfg["tile"]:
        mp = MediaPipeDetector(models_dir, min_score=cfg["mediapipe_min_score"])
        if cfg["full_frame"]:
            members.append(mp)
        if cfg["tile"]:
            members.append(TiledDetector(mp, tile=cfg["tile"], overlap=cfg["tile_overlap"],
                                         max_tiles=cfg["max_tiles"]))
    return EnsembleDetector("ensemble", members)


_CACHE: dict[tuple, FaceDetector] = {}
_CACHE_LOCK = threading.Lock()


def make_detector(name: str, models_dir: Path, **options: Any) -> FaceDetector:
    """A detector by name, built once per process per (name, models_dir, options).

    Raises ``UnknownBackend`` for an unknown name, ``ValueError`` for a bad option,
    ``ModelError`` when a model file is missing or corrupt, and ``ProcessingFailed`` when a
    runtime cannot start.
    """
    _lookup(name)
    key = (name, str(Path(models_dir).resolve()), tuple(sorted(options.items())))
    with _CACHE_LOCK:
        det = _CACHE.get(key)
        if det is None:
            try:
                det = backend(name, Path(models_dir), **options)
            except TypeError as exc:  # an option the backend does not take
                raise ValueError(f"bad option for detector {name!r}: {exc}") from exc
            except (ImportError, RuntimeError) as exc:
                raise ProcessingFailed("detector.unavailable",
                                       f"detector {name!r} could not start: {type(exc).__name__}: {exc}") from exc
            _CACHE[key] = det
        return det
