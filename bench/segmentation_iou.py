"""Person-mask IoU and time per image of each segmentation backend on segmentation-dev.

Prints mean / 10th percentile IoU and ms/image for rembg (u2netp), MediaPipe selfie and
the fused default (what ``make_segmenter('fused')`` returns). Masks are resized to their
image with nearest-neighbour first (many are stored scaled down, see the dataset README).

    uv run python bench/segmentation_iou.py [--limit N] [--data DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facewarden.models.segment_mediapipe import MediaPipeSegmenter
from facewarden.models.segment_rembg import RembgSegmenter
from facewarden.models.segmenters import FusedSegmenter

ROOT = Path(__file__).resolve().parents[1]


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "segmentation-dev")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    args = ap.parse_args()

    cv2.setNumThreads(1)
    rembg_seg, mp_seg = RembgSegmenter(args.models_dir), MediaPipeSegmenter(args.models_dir)
    files = sorted((args.data / "images").glob("*.jpg"))
    if args.limit:
        files = files[: args.limit]
    scores: dict[str, list[float]] = {"rembg-u2netp": [], "mediapipe-selfie": [], "fused (default)": []}
    times: dict[str, float] = dict.fromkeys(scores, 0.0)
    for path in files:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        gt_im = Image.open(args.data / "masks" / f"{path.stem}.png").convert("L")
        gt = cv2.resize(np.asarray(gt_im), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST) > 127
        t0 = time.perf_counter()
        r = rembg_seg.segment(rgb)
        t1 = time.perf_counter()
        m = mp_seg.segment(rgb)
        t2 = time.perf_counter()
        f = FusedSegmenter.fuse([r, m])
        t3 = time.perf_counter()
        times["rembg-u2netp"] += t1 - t0
        times["mediapipe-selfie"] += t2 - t1
        times["fused (default)"] += t3 - t0
        scores["rembg-u2netp"].append(iou(r > 0.5, gt))
        scores["mediapipe-selfie"].append(iou(m > 0.5, gt))
        scores["fused (default)"].append(iou(f > 0.5, gt))
    print(f"segmentation-dev: {len(files)} images (noisy timings: shared 2-core machine)")
    print(f"{'backend':20} {'mean IoU':>9} {'p10 IoU':>8} {'min':>6} {'ms/img':>7}")
    for name, vals in scores.items():
        v = np.array(vals)
        print(f"{name:20} {v.mean():9.4f} {np.percentile(v, 10):8.4f} {v.min():6.3f} "
              f"{1000 * times[name] / len(files):7.1f}")


if __name__ == "__main__":
    main()
