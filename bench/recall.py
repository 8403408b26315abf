"""Recall of face detector backends: wider-dev by face size and pose beside deface, or the
PASCAL photos and their hard variants.

    taskset -c 0 uv run python bench/recall.py                # wider-dev: auto + ensemble + deface
    uv run python bench/recall.py --backends auto,centerface --no-deface --misses
    uv run python bench/recall.py --set pascal --backends auto --canvases 6   # the old variants

wider-dev (default, ``--set wider``): 31 WIDER FACE val photos read from ../shared (never
copied). One row per tool and fold (even = tuning fold, odd = held out, all): found/total per
face-width bucket (<10, 10-16, 16-32, 32-64, 64-128, >=128 px), recall of faces >= 16 px,
faces >= 16 px that WIDER does not flag as heavily occluded (">=16 vis"), atypical-pose
faces found, overall recall, share of the picture obscured, ms per image (detect + obscure).
deface (CLI defaults: CenterFace at 1x, threshold 0.2, mask scale 1.3) runs in its
throwaway venv on the same pixels in the same run (see bench/deface_compare.py).

Prints one row per backend x variant: recall (GT faces >= 70% inside the obscuring mask, at
the handler's default margin and shape), the share of image area obscured (the price paid in
false positives and margins), and detection + obscuring time per image on this machine
(single process; noisy when other work shares the 2 cores). Variants: see bench/common.py.
A last table times the whole anonymize handler per image (decode, detect, obscure, encode).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import COVER, covered, fmt_table, score_masks, variants
from bench.wider import HEADER, Tally, load_wider
from facewarden.config import default_models_dir
from facewarden.handlers.anonymize import DEFAULT_MARGIN, AnonymizeHandler, face_mask, obscure_faces
from facewarden.handlers.base import HandlerContext
from facewarden.handlers.imageio import decode
from facewarden.models.detectors import make_detector

BACKENDS = ("yunet", "yunet-native", "yunet-pyramid", "mediapipe", "mediapipe-tiled", "ensemble", "auto")
WIDER_BACKENDS = ("auto", "ensemble")


def wider_main(args) -> int:
    samples = load_wider()
    options = {} if args.min_score is None else {"min_score": args.min_score}
    options.update(json.loads(args.opts))
    print(f"wider-dev: {sum(len(s.boxes) for s in samples)} faces in {len(samples)} photos "
          f"(even fold {sum(s.fold == 'even' for s in samples)} photos = tuning, odd = held out); "
          f"cover>={COVER}; margin={args.margin} shape={args.shape}; options={options or 'defaults'}\n")
    rows = []

    def report(tool: str, masks: list[np.ndarray], times: list[float]) -> None:
        for fold in ("even", "odd", "all"):
            t = Tally()
            for s, m in zip(samples, masks, strict=True):
                if fold == "all" or s.fold == fold:
                    t.add(s, m)
            ms = np.array([x for s, x in zip(samples, times, strict=True) if fold == "all" or s.fold == fold]) * 1000
            rows.append([tool, fold, *t.row(), f"{ms.mean():.0f}"])
            print("  ".join(rows[-1]), flush=True)
            if args.misses and fold == "all":
                for name, box, c, occl in t.misses:
                    print(f"  miss {tool} {name} box={tuple(round(v) for v in box)} covered={c:.2f} "
                          f"occlusion={('none', 'partial', 'heavy')[occl]}")

    for b in args.backends.split(","):
        masks, times = run_backend(b, samples, args.models_dir, args.margin, args.shape, options)
        report(b, masks, times)
    if not args.no_deface:
        from bench.deface_compare import DEFACE_PY, run_deface

        if not DEFACE_PY.exists():
            print(f"(deface skipped: {DEFACE_PY} missing; see bench/deface_compare.py)")
        else:
            cpu = next(iter(os.sched_getaffinity(0))) if len(os.sched_getaffinity(0)) == 1 else None
            used, dmasks, dtimes = run_deface({"wider": samples}, "onnxrt", 0.2, [1.3], cpu)
            report(f"deface {used} 0.2/1.3", dmasks[("wider", 1.3)], dtimes["wider"])
    print()
    print(fmt_table(["tool", "fold", *HEADER, "ms/img"], rows))
    return 0


def run_backend(name: str, samples, models_dir: Path, margin: float, shape: str, options: dict):
    det = make_detector(name, models_dir, **options)
    det.detect(np.full((256, 256, 3), 127, np.uint8))  # warm-up outside the timing
    masks, times = [], []
    for s in samples:
        t0 = time.perf_counter()
        faces = det.detect(s.rgb)
        obscure_faces(s.rgb, faces, margin=margin, shape=shape)
        times.append(time.perf_counter() - t0)
        masks.append(face_mask(*s.rgb.shape[:2], faces, shape=shape, margin=margin))
    return masks, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("wider", "pascal"), default="wider")
    ap.add_argument("--backends", default=None, help="comma-separated detector names")
    ap.add_argument("--no-deface", action="store_true", help="wider: skip the deface rows")
    ap.add_argument("--variants", default="pascal,shrunk,canvas")
    ap.add_argument("--canvases", type=int, default=3, help="1920x1080 canvases in the canvas variant")
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    ap.add_argument("--shape", default="ellipse")
    ap.add_argument("--min-score", type=float, default=None, help="override every backend's default")
    ap.add_argument("--opts", default="{}", help='extra detector options as JSON, e.g. \'{"tile": 256}\'')
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument("--misses", action="store_true", help="list the GT boxes each backend missed")
    ap.add_argument("--face-px", type=float, default=None,
                    help="median face of the shrunk/canvas variants (default 12; try 10 or 8 for headroom)")
    ap.add_argument("--no-handler", action="store_true", help="skip the handler latency table")
    ap.add_argument("--repeat", type=int, default=2, help="passes over each variant for handler latency")
    args = ap.parse_args(argv)
    if args.set == "wider":
        args.backends = args.backends or ",".join(WIDER_BACKENDS)
        return wider_main(args)
    args.backends = args.backends or ",".join(BACKENDS)

    data = variants(args.canvases) if args.face_px is None else variants(args.canvases, args.face_px)
    wanted = args.variants.split(",")
    options = {} if args.min_score is None else {"min_score": args.min_score}
    options.update(json.loads(args.opts))
    print("faces per variant: " + ", ".join(f"{v}={sum(len(s.boxes) for s in data[v])} in {len(data[v])} images"
                                            for v in wanted))
    print(f"margin={args.margin} shape={args.shape} cover>={COVER} options={options or 'defaults'}\n")
    rows = []
    for b in args.backends.split(","):
        for v in wanted:
            masks, times = run_backend(b, data[v], args.models_dir, args.margin, args.shape, options)
            found, total, area = score_masks(data[v], masks)
            ms = np.array(times) * 1000
            rows.append([b, v, f"{found / total:.3f}", f"{found}/{total}", f"{area:.3f}",
                         f"{ms.mean():.0f}", f"{np.percentile(ms, 95):.0f}"])
            if args.misses:
                for s, m in zip(data[v], masks, strict=True):
                    for box in s.boxes:
                        c = covered(m, box)
                        if c < COVER:
                            print(f"  miss {b}/{v} {s.name} box={tuple(round(t) for t in box)} covered={c:.2f}")
            print(fmt_table(["backend", "variant", "recall", "found", "area", "ms/img", "p95 ms"], rows[-1:])
                  .splitlines()[-1], flush=True)
    print()
    print(fmt_table(["backend", "variant", "recall", "found", "area", "ms/img", "p95 ms"], rows))
    if not args.no_handler:
        print("\nanonymize handler, default params, whole job per image: decode JPEG + detect + obscure"
              " + encode (the daemon's CPU share of a job; no store I/O)")
        print(fmt_table(["variant", "images", "p50 ms", "p95 ms", "max ms"], handler_latency(data, wanted, args)))
    return 0


def handler_latency(data, wanted: list[str], args) -> list[list[str]]:
    import logging

    import structlog

    # One info line per image would drown the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    handler = AnonymizeHandler()
    params = handler.validate_params({})
    ctx = HandlerContext(models_dir=args.models_dir)
    handler.warm_up(ctx, params)
    rows = []
    for v in wanted:
        blobs = []
        for s in data[v]:
            buf = io.BytesIO()
            Image.fromarray(s.rgb).save(buf, "JPEG", quality=92)
            blobs.append(buf.getvalue())
        ms = []
        for _ in range(args.repeat):
            for blob in blobs:
                t0 = time.perf_counter()
                handler.run(decode(blob), params, ctx)
                ms.append((time.perf_counter() - t0) * 1000)
        rows.append([v, str(len(ms)), f"{np.percentile(ms, 50):.0f}", f"{np.percentile(ms, 95):.0f}",
                     f"{max(ms):.0f}"])
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
