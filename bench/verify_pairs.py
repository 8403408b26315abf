"""Verification accuracy and embedding latency per backend on identities-knn.

Every face of identities-knn with a known identity becomes a sample: the 9 training photos
(identity = folder), the 3 single-person test photos (identity = file name), and the faces
of the two group photos, labelled by hand from the photos (by the face's centre x):
obama_and_biden.jpg has Biden on the left, Obama in the middle and a child bottom right
who is in no other photo; kit_with_rose.jpg has Rose Leslie on the left, Kit Harington on
the right. All pairs of samples are then compared at each backend's default threshold:
accuracy, FAR (different people accepted), FRR (same person rejected). The distance
ranges of same and different pairs show the margin around the threshold.

Impostors (``--impostors``, on by default): every face YuNet finds (≥ 40 px) in the 9
PASCAL VOC group photos of ../shared/data/faces-pascal, strangers to the five identities,
compared with every labelled identities-knn face: more "different" pairs for the FAR.

Latency: each face embedded alone (the per-face cost the handler pays), repeated
``--repeat`` times, p50/p95 in ms, with the process pinned to one thread. Detection (YuNet)
is timed separately, per photo, with the detector the verify handler uses
(``--detector``). Figures taken while other work runs are noisy.

    uv run python bench/verify_pairs.py [--backends dlib,facenet] [--repeat 5] [--no-impostors]
    taskset -c 0 uv run python bench/verify_pairs.py    # on one core

For a strict one-core figure pin the process as well:
``OMP_NUM_THREADS=1 taskset -c 0 uv run python bench/verify_pairs.py``. The thresholds
were chosen on these same faces (there is no held-out set this small), so the accuracy
figures say the margin exists, not what it is on a large population.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import cv2
import numpy as np

from facewarden.config import default_models_dir
from facewarden.handlers.imageio import decode
from facewarden.models.detectors import make_detector
from facewarden.models.embedders import make_embedder
from facewarden.models.protocols import Face

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "identities-knn"
SINGLE_TEST = {"alex_lacamoire1.jpg": "alex_lacamoire", "johnsnow_test1.jpg": "kit_harington",
               "obama1.jpg": "obama"}


def _group_label(photo: str, face: Face, width: int) -> str:
    cx = (face.x + face.w / 2) / width
    if photo == "obama_and_biden.jpg":
        if face.y + face.h / 2 > 0.6 * 1428:
            return "child-in-obama_and_biden"
        return "biden" if cx < 0.5 else "obama"
    return "rose_leslie" if cx < 0.35 else "kit_harington"


def samples(det) -> list[tuple[str, str, np.ndarray, Face, float]]:
    """(label, photo, rgb, face, detect_ms) for every labelled face."""
    out = []
    photos = [(p.parent.name, p) for p in sorted((DATA / "train").glob("*/*"))]
    photos += [(SINGLE_TEST.get(p.name), p) for p in sorted((DATA / "test").glob("*.jpg"))]
    for label, path in photos:
        rgb = decode(path.read_bytes()).rgb
        t = time.perf_counter()
        faces = sorted(det.detect(rgb), key=lambda f: f.w * f.h, reverse=True)
        ms = (time.perf_counter() - t) * 1000
        if label is not None:
            out.append((label, path.name, rgb, faces[0], ms))
        else:
            # Faces under 40 px in the group photos are people in the background, whom the
            # position labels below do not describe (and verify does not match under 24 px).
            for f in faces:
                if f.w >= 40:
                    out.append((_group_label(path.name, f, rgb.shape[1]), path.name, rgb, f, ms))
    return out


def impostors(det, min_width: float = 40.0) -> list[tuple[np.ndarray, Face]]:
    out = []
    for path in sorted((DATA.parent / "faces-pascal").glob("*.jpg")):
        rgb = decode(path.read_bytes()).rgb
        out += [(rgb, f) for f in det.detect(rgb) if f.w >= min_width]
    return out


def run(backend: str, data, repeat: int, models_dir: Path, strangers) -> None:
    emb = make_embedder(backend, models_dir)
    emb.embed(data[0][2], [data[0][3]])  # warm-up
    vecs, times = [], []
    for _, _, rgb, face, _ in data:
        for _ in range(repeat):
            t = time.perf_counter()
            v = emb.embed(rgb, [face])[0]
            times.append((time.perf_counter() - t) * 1000)
        vecs.append(v)
    labels = [d[0] for d in data]
    same, diff = [], []
    for i, j in itertools.combinations(range(len(data)), 2):
        d = float(emb.distance(vecs[i], vecs[j]))
        (same if labels[i] == labels[j] else diff).append(d)
    same_a, diff_a = np.asarray(same), np.asarray(diff)
    thr = emb.default_threshold
    fr = int((same_a >= thr).sum())
    fa = int((diff_a < thr).sum())
    n = len(same) + len(diff)
    print(f"\n== {emb.name} (dim {emb.dim}), default threshold {thr}")
    print(f"faces {len(data)} ({len(set(labels))} identities), pairs {n}: same {len(same)}, different {len(diff)}")
    print(f"accuracy {100 * (n - fr - fa) / n:.2f}%   FAR {100 * fa / len(diff):.2f}% ({fa}/{len(diff)})   "
          f"FRR {100 * fr / len(same):.2f}% ({fr}/{len(same)})")
    print(f"same-person distances  min {same_a.min():.3f}  median {np.median(same_a):.3f}  max {same_a.max():.3f}")
    print(f"different distances    min {diff_a.min():.3f}  median {np.median(diff_a):.3f}  max {diff_a.max():.3f}")
    print(f"margin: every threshold in [{same_a.max():.3f}, {diff_a.min():.3f}) separates all pairs"
          if same_a.max() < diff_a.min() else "the distributions overlap")
    if strangers:
        svecs = np.asarray([emb.embed(rgb, [f])[0] for rgb, f in strangers])
        d = np.asarray([emb.distance(v, svecs) for v in vecs]).ravel()
        fa2 = int((d < thr).sum())
        print(f"impostors: {len(strangers)} PASCAL faces x {len(vecs)} known faces = {d.size} different pairs: "
              f"FAR {100 * fa2 / d.size:.2f}% ({fa2})  min distance {d.min():.3f}")
        total = n + d.size
        print(f"all pairs together: {total}, accuracy {100 * (total - fr - fa - fa2) / total:.2f}%  "
              f"FAR {100 * (fa + fa2) / (len(diff) + d.size):.2f}%")
    t = np.asarray(times)
    print(f"embedding latency per face (1 thread, {repeat}x each): p50 {np.percentile(t, 50):.1f} ms  "
          f"p95 {np.percentile(t, 95):.1f} ms  mean {t.mean():.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="dlib,facenet")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument("--no-impostors", dest="impostors", action="store_false")
    ap.add_argument("--detector", default="finder-verify",
                    help="the verify handler's FaceFinder policy (default); 'yunet' = the pre-finder path")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    det = make_detector(args.detector, args.models_dir, **({"min_score": 0.7} if args.detector == "yunet" else {}))
    data = samples(det)
    dms = sorted({(d[1], d[4]) for d in data})
    print(f"{args.detector} detection per photo: median {np.median([m for _, m in dms]):.0f} ms over {len(dms)} photos "
          f"({min(d[2].shape[0] * d[2].shape[1] for d in data) / 1e6:.1f}-"
          f"{max(d[2].shape[0] * d[2].shape[1] for d in data) / 1e6:.1f} MP)")
    strangers = impostors(det) if args.impostors else []
    for backend in args.backends.split(","):
        run(backend.strip(), data, args.repeat, args.models_dir, strangers)


if __name__ == "__main__":
    main()
