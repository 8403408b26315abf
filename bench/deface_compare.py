"""facewarden's default anonymizer beside ``deface`` (PyPI), on the same photos, in one run.

deface is never a facewarden dependency: it runs from a throwaway venv, in a subprocess.

    python3 -m venv /tmp/deface-venv && /tmp/deface-venv/bin/pip install deface
    /tmp/deface-venv/bin/pip install onnx onnxruntime   # deface's faster backend (optional)
    uv run python bench/deface_compare.py                # ~1-2 min
    uv run python bench/deface_compare.py --no-pin --canvases 6 --deface-backends onnxrt

What is compared, like with like:

- Same images (bench/common.py variants: pascal, shrunk, canvas; and wider1080: wider-dev's
  31 crowd photos scaled to 1920 px wide, the "1080p crowd photos" of the speed target),
  handed to both as pixels.
- Same measure: a GT face counts when >= 70% of its box is inside the obscuring mask. Our mask
  is ``face_mask`` (exactly the pixels ``obscure_faces`` replaces); deface's is obtained by
  running deface's own ``anonymize_frame`` (blur, ellipse) on a random-noise frame with its
  detections and taking the pixels that changed, so its geometry is deface's code, not ours.
- Same work timed: detection + obscuring of one decoded frame (no file I/O, no encoding),
  after a warm-up, each side pinned to the same single CPU core by default (the daemon runs
  one worker per core). Numbers are noisy when other processes share the machine.
- Masks differ in size by default: deface grows its box by 1.3x mask scale (0.3 of the box
  per side), we by ``DEFAULT_MARGIN`` (0.2 per side, >= 5 px). So the table also shows each
  side at the other's margin, computed from the same detections, and the obscured-area share
  of every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Sample, fmt_table, score_masks, variants
from facewarden.config import default_models_dir
from facewarden.handlers.anonymize import AnonymizeHandler, face_mask, obscure_faces
from facewarden.models.detectors import make_detector

DEFACE_PY = Path("/tmp/deface-venv/bin/python")

#: Runs inside deface's venv. Reads frames from an .npz, writes masks + timings.
WORKER = r'''
import json, sys, time
import numpy as np
from deface.centerface import CenterFace
from deface.deface import anonymize_frame

src, dst, backend, thresh = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
scales = [float(s) for s in sys.argv[5].split(",")]
frames = np.load(src)
cf = CenterFace(in_shape=None, backend=backend)
first = frames[frames.files[0]]
cf(first, threshold=thresh)  # warm-up
out, times = {}, {}
rng = np.random.default_rng(0)
for key in frames.files:
    frame = frames[key]
    t0 = time.perf_counter()
    dets, _ = cf(frame, threshold=thresh)
    work = frame.copy()
    anonymize_frame(dets, work, mask_scale=scales[0], replacewith="blur", ellipse=True,
                    draw_scores=False, replaceimg=None, mosaicsize=20)
    times[key] = time.perf_counter() - t0
    for s in scales:
        noise = rng.integers(0, 256, frame.shape, dtype=np.uint8)
        drawn = noise.copy()
        anonymize_frame(dets, drawn, mask_scale=s, replacewith="blur", ellipse=True,
                        draw_scores=False, replaceimg=None, mosaicsize=20)
        out[f"{key}|{s}"] = (drawn != noise).any(axis=2)
np.savez_compressed(dst, **out)
print(json.dumps({"times": times, "backend": cf.backend}))
'''


def wider_scaled(n: int, width: int) -> list[Sample]:
    """wider-dev's crowd photos (read from ../shared, never copied) scaled to ``width`` px
    wide, boxes with them: 1920 gives real 1080p-class crowd photos, the speed target's case."""
    import cv2

    from bench.wider import load_wider

    out = []
    for s in load_wider()[:n]:
        k = width / s.rgb.shape[1]
        rgb = cv2.resize(s.rgb, (width, round(s.rgb.shape[0] * k)), interpolation=cv2.INTER_LINEAR)
        out.append(Sample(s.name, rgb, [(x * k, y * k, w * k, h * k) for x, y, w, h in s.boxes]))
    return out


def run_ours(data, models_dir: Path, margins: list[float]):
    handler = AnonymizeHandler()
    p = handler.validate_params({})
    det = make_detector(p["detector"], models_dir, min_score=p["min_score"])
    det.detect(np.full((256, 256, 3), 127, np.uint8))
    masks: dict[tuple[str, float], list[np.ndarray]] = {}
    times: dict[str, list[float]] = {}
    for v, samples in data.items():
        for s in samples:
            t0 = time.perf_counter()
            faces = det.detect(s.rgb)
            obscure_faces(s.rgb, faces, mode=p["mode"], shape=p["shape"], margin=p["margin"])
            times.setdefault(v, []).append(time.perf_counter() - t0)
            for m in margins:
                masks.setdefault((v, m), []).append(face_mask(*s.rgb.shape[:2], faces, shape=p["shape"], margin=m))
    return p, masks, times


def run_deface(data, backend: str, thresh: float, scales: list[float], cpu: int | None):
    with tempfile.TemporaryDirectory(prefix="fw-deface-") as tmp:
        src, dst, script = Path(tmp, "in.npz"), Path(tmp, "out.npz"), Path(tmp, "worker.py")
        np.savez(src, **{f"{v}|{i}": s.rgb for v, samples in data.items() for i, s in enumerate(samples)})
        script.write_text(WORKER)
        cmd = [str(DEFACE_PY), str(script), str(src), str(dst), backend, str(thresh), ",".join(map(str, scales))]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise SystemExit(f"deface worker failed:\n{res.stderr[-2000:]}")
        info = json.loads(res.stdout.strip().splitlines()[-1])
        out = np.load(dst)
        masks: dict[tuple[str, float], list[np.ndarray]] = {}
        times: dict[str, list[float]] = {}
        for v, samples in data.items():
            for i in range(len(samples)):
                times.setdefault(v, []).append(info["times"][f"{v}|{i}"])
                for s in scales:
                    masks.setdefault((v, s), []).append(out[f"{v}|{i}|{s}"])
        return info["backend"], masks, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--canvases", type=int, default=3)
    ap.add_argument("--deface-backends", default="onnxrt,opencv",
                    help="deface's ONNX runners to try (opencv is what a bare `pip install deface` uses)")
    ap.add_argument("--deface-thresh", type=float, default=0.2, help="deface's default is 0.2")
    ap.add_argument("--cpu", type=int, default=0, help="core both sides are pinned to")
    ap.add_argument("--wider1080", type=int, default=31,
                    help="wider-dev crowd photos scaled to 1920 px wide, as a variant (0: none)")
    ap.add_argument("--wider12mp", type=int, default=0,
                    help="wider-dev photos scaled to 4000 px wide (~12 MP), as a variant (slow for deface)")
    ap.add_argument("--no-pin", action="store_true", help="let both sides use every core")
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    args = ap.parse_args(argv)
    if not DEFACE_PY.exists():
        raise SystemExit(f"{DEFACE_PY} missing; see this script's docstring for the throwaway venv")
    cpu = None if args.no_pin else args.cpu
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    data = variants(args.canvases)
    if args.wider1080:
        data["wider1080"] = wider_scaled(args.wider1080, 1920)
    if args.wider12mp:
        data["wider12mp"] = wider_scaled(args.wider12mp, 4000)
    ours_margin = AnonymizeHandler().validate_params({})["margin"]
    deface_scale = 1.3
    # deface's mask scale s grows the box by (s - 1) of its size per side: 1.3 <-> margin 0.3.
    p, our_masks, our_times = run_ours(data, args.models_dir, [ours_margin, deface_scale - 1.0])
    rows = []
    #: img/s over every image of every variant, per tool (the throughput target's measure).
    overall: dict[str, float] = {}
    deface_times: dict[str, dict[str, list[float]]] = {}

    def add(tool: str, mask_note: str, masks, times, key_extra):
        all_found = all_total = 0
        for v, samples in data.items():
            found, total, area = score_masks(samples, masks[(v, key_extra)])
            all_found, all_total = all_found + found, all_total + total
            t = np.array(times[v])
            rows.append([tool, mask_note, v, f"{found / total:.3f}", f"{found}/{total}", f"{area:.3f}",
                         f"{t.mean() * 1000:.0f}", f"{len(t) / t.sum():.2f}"])
        t = np.concatenate([np.array(times[v]) for v in data])
        overall[tool] = len(t) / t.sum()
        rows.append([tool, mask_note, "all", f"{all_found / all_total:.3f}", f"{all_found}/{all_total}", "",
                     f"{t.mean() * 1000:.0f}", f"{overall[tool]:.2f}"])

    ours = f"facewarden {p['detector']} (score>={p['min_score']})"
    add(ours, f"margin {ours_margin} (default)", our_masks, our_times, ours_margin)
    add(ours, f"margin {deface_scale - 1.0:.1f} (=deface 1.3)", our_masks, our_times, deface_scale - 1.0)
    for backend in args.deface_backends.split(","):
        used, masks, times = run_deface(data, backend, args.deface_thresh, [deface_scale, 1.0 + ours_margin], cpu)
        deface_times[used] = times
        tool = f"deface {used} (thresh {args.deface_thresh})"
        add(tool, f"mask_scale {deface_scale} (default)", masks, times, deface_scale)
        add(tool, f"mask_scale {1.0 + ours_margin:.1f} (=ours)", masks, times, 1.0 + ours_margin)
    pin = "unpinned" if cpu is None else f"both pinned to CPU {cpu}"
    print(f"{sum(len(s) for s in data.values())} images; {pin}; time = detect + obscure per decoded frame\n")
    print(fmt_table(["tool", "mask", "variant", "recall", "found", "area", "ms/img", "img/s"], rows))
    print()
    for tool, ips in overall.items():
        if tool != ours:
            print(f"throughput, all images: {ours} {overall[ours]:.2f} img/s = "
                  f"{overall[ours] / ips:.2f}x {tool} ({ips:.2f} img/s)")
    for v in ("canvas", "wider1080", "wider12mp"):
        if v not in data:
            continue
        mine = len(our_times[v]) / sum(our_times[v])
        for backend, times in deface_times.items():
            print(f"throughput, {v}: {mine:.2f} img/s = {mine * sum(times[v]) / len(times[v]):.2f}x "
                  f"deface {backend}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
