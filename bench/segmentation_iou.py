"""Person-mask IoU and time per image of each segmentation backend on segmentation-dev.

Prints mean / 10th percentile / min IoU and ms/image for rembg (u2netp), MediaPipe selfie
and the fused default (what ``make_segmenter('fused')`` returns), each timed on its own.
Masks are resized to their image with nearest-neighbour first (many are stored scaled
down, see the dataset README).

Tuned constants (FUSED_THRESHOLD, CROP_MARGIN) were chosen on the even half of the sorted
file list; the 2-fold table reports even and odd halves separately, so the odd column is
the honest estimate of what tuning on the even half generalises to.

    taskset -c 1 uv run python bench/segmentation_iou.py [--limit N] [--data DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facewarden.config import default_models_dir
from facewarden.models.segmenters import make_segmenter

ROOT = Path(__file__).resolve().parents[1]


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def summary(vals: np.ndarray) -> str:
    return f"{vals.mean():9.4f} {np.percentile(vals, 10):8.4f} {vals.min():6.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "segmentation-dev")
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    args = ap.parse_args()

    cv2.setNumThreads(1)
    backends = {"rembg-u2netp": make_segmenter("rembg", args.models_dir),
                "mediapipe-selfie": make_segmenter("mediapipe", args.models_dir),
                "fused (default)": make_segmenter("fused", args.models_dir)}
    files = sorted((args.data / "images").glob("*.jpg"))
    if args.limit:
        files = files[: args.limit]
    scores: dict[str, list[float]] = {name: [] for name in backends}
    times: dict[str, float] = dict.fromkeys(backends, 0.0)
    for path in files:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        gt_im = Image.open(args.data / "masks" / f"{path.stem}.png").convert("L")
        gt = cv2.resize(np.asarray(gt_im), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST) > 127
        for name, seg in backends.items():
            t0 = time.perf_counter()
            prob = seg.segment(rgb)
            times[name] += time.perf_counter() - t0
            scores[name].append(iou(prob > 0.5, gt))
    print(f"segmentation-dev: {len(files)} images (noisy timings: shared 2-core machine)")
    print(f"{'backend':20} {'mean IoU':>9} {'p10 IoU':>8} {'min':>6} {'ms/img':>7}")
    for name, vals in scores.items():
        print(f"{name:20} {summary(np.array(vals))} {1000 * times[name] / len(files):7.1f}")
    print("\n2-fold (sorted file list; constants tuned on even, odd is held out)")
    print(f"{'backend':20} {'fold':5} {'mean IoU':>9} {'p10 IoU':>8} {'min':>6}")
    for name, vals in scores.items():
        v = np.array(vals)
        for fold, part in (("even", v[0::2]), ("odd", v[1::2])):
            print(f"{name:20} {fold:5} {summary(part)}")


if __name__ == "__main__":
    main()
