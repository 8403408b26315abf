"""facewarden's video anonymizer beside ``deface`` (PyPI) on the same generated clips, in one run.

Clips come from bench/make_clips.py (a camera panning and zooming over the PASCAL photos,
per-frame GT boxes, a tone as audio); they are made on first use under ``--clips-dir``.
deface is never a facewarden dependency: it runs from a throwaway venv (see
bench/deface_compare.py), in a subprocess.

    uv run python bench/video.py                         # 720p, 1080p, 4K; deface at 720p and 1080p
    uv run python bench/video.py --sizes 1080p --seconds 10 --deface-sizes 1080p
    uv run python bench/video.py --sizes 1080p --seconds 5,20 --no-deface   # RSS vs length

What is measured, like with like:

- Speed: each side's whole command on the clip file (decode, detect, obscure, encode,
  write), wall time and peak RSS from ``/usr/bin/time``, both pinned to the same core
  (``--cpu``). fps = frames / wall time, model loading included (a few hundred ms).
- Recall: a GT face in a frame counts as obscured when >= 70% of its (visible) box lies
  in the obscuring mask. Ours is exactly the pixels ``obscure_faces`` replaces
  (``face_mask`` of the boxes each frame was obscured with); deface's is obtained by
  running deface's own CenterFace + ``anonymize_frame`` (threshold 0.2, mask scale 1.3,
  ellipse, its defaults) on every decoded frame and taking the pixels it changes.
- "longest run": the most consecutive frames any one GT face stayed un-obscured (the
  target is <= 1).
- Audio: whether the output's audio packets are byte-identical to the input's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import COVER, covered, fmt_table
from bench.make_clips import SIZES, make_clip
from facewarden.config import default_models_dir

DEFACE_PY = Path("/tmp/deface-venv/bin/python")
DEFACE_CLI = Path("/tmp/deface-venv/bin/deface")

#: Runs inside deface's venv: deface's detector + mask on every frame, scored against GT.
DEFACE_RECALL = r'''
import json, sys
import imageio.v2 as imageio
import numpy as np
from deface.centerface import CenterFace
from deface.deface import anonymize_frame

clip, gt_path, thresh, scale = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
gt = json.load(open(gt_path))
reader = imageio.get_reader(clip)
cf = CenterFace(in_shape=None, backend="auto")
rng = np.random.default_rng(0)
out = []
for i, frame in enumerate(reader):
    if i >= len(gt["boxes"]):
        break
    dets, _ = cf(frame, threshold=thresh)
    noise = rng.integers(0, 256, frame.shape, dtype=np.uint8)
    drawn = noise.copy()
    anonymize_frame(dets, drawn, mask_scale=scale, replacewith="blur", ellipse=True, draw_scores=False,
                    replaceimg=None, mosaicsize=20)
    mask = (drawn != noise).any(axis=2)
    row = []
    for fid, x, y, w, h in gt["boxes"][i]:
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(mask.shape[1], round(x + w)), min(mask.shape[0], round(y + h))
        row.append([fid, float(mask[y0:y1, x0:x1].mean()) if x1 > x0 and y1 > y0 else 0.0])
    out.append(row)
print(json.dumps(out))
'''


def timed(cmd: list[str], cpu: int | None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, peak RSS MB, result) of a command, pinned to one core when asked."""
    full = ["/usr/bin/time", "-f", "FWTIME %e %M", *cmd]
    if cpu is not None:
        full = ["taskset", "-c", str(cpu), *full]
    res = subprocess.run(full, capture_output=True, text=True, timeout=7200)
    if res.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("FWTIME ")][-1].split()
    return float(line[1]), int(line[2]) / 1024.0, res


def ours_worker(clip: Path, out: Path, boxes: Path, params: str) -> None:
    """Child process: what a worker does with a video (handler.run_file), plus the boxes."""
    from facewarden.handlers import video as vh
    from facewarden.video.faces import frame_detector
    from facewarden.video.passes import anonymize_video

    h = vh.get("anonymize")
    p = h.validate_params(json.loads(params))
    det = frame_detector(default_models_dir(), p)
    covers: dict = {}
    facts = anonymize_video(clip, out, p, det, boxes_out=covers)
    boxes.write_text(json.dumps({"params": p, "facts": facts,
                                 "covers": {str(k): [list(b) for b in v] for k, v in covers.items()}}))


def score(gt: dict, per_frame: list[list[tuple[int, float]]]) -> tuple[int, int, int]:
    """(covered face-frames, total, longest run of frames any GT face stayed visible)."""
    found = total = 0
    runs: dict[int, int] = {}
    longest = 0
    last_seen: dict[int, int] = {}
    for i, row in enumerate(per_frame):
        for fid, share in row:
            total += 1
            ok = share >= COVER
            found += ok
            if last_seen.get(fid) != i - 1:
                runs[fid] = 0  # the face left the frame in between: a new run
            last_seen[fid] = i
            runs[fid] = 0 if ok else runs.get(fid, 0) + 1
            longest = max(longest, runs[fid])
    return found, total, longest


def ours_coverage(gt: dict, covers: dict, params: dict) -> list[list[tuple[int, float]]]:
    from facewarden.handlers.anonymize import face_mask
    from facewarden.models.protocols import Face

    out = []
    for i, row in enumerate(gt["boxes"]):
        faces = [Face(*b[:4], b[4]) for b in covers.get(str(i), [])]
        mask = face_mask(gt["height"], gt["width"], faces, shape=params["shape"], margin=params["margin"])
        out.append([(fid, covered(mask, (x, y, w, h))) for fid, x, y, w, h in row])
    return out


def audio_packets(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips-dir", type=Path, default=Path("/tmp/fw-clips"))
    ap.add_argument("--sizes", default="720p,1080p,4k")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--seconds", default="6", help="clip length(s), comma-separated")
    ap.add_argument("--seconds-4k", type=float, default=3.0, help="4K clips are shorter (time)")
    ap.add_argument("--deface-sizes", default="720p,1080p", help="sizes deface runs on ('' = none)")
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--params", default="{}", help="video anonymize params as JSON, e.g. '{\"detect_every\": 2}'")
    ap.add_argument("--cpu", type=int, default=0, help="core both sides are pinned to")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--worker", nargs=4, metavar=("CLIP", "OUT", "BOXES", "PARAMS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        ours_worker(Path(args.worker[0]), Path(args.worker[1]), Path(args.worker[2]), args.worker[3])
        return 0
    cpu = None if args.no_pin else args.cpu
    deface_sizes = set() if args.no_deface else {s for s in args.deface_sizes.lower().split(",") if s}
    if deface_sizes and not DEFACE_CLI.exists():
        raise SystemExit(f"{DEFACE_CLI} missing; see bench/deface_compare.py for the throwaway venv, "
                         "or pass --no-deface")
    args.clips_dir.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    for size in [s.lower() for s in args.sizes.split(",")]:
        for secs in [float(s) for s in args.seconds.split(",")]:
            secs = args.seconds_4k if size == "4k" else secs
            clip = args.clips_dir / f"pan-{size}-{args.fps:g}fps-{secs:g}s.mp4"
            gt_path = Path(str(clip) + ".gt.json")
            if not gt_path.exists():
                make_clip(clip, size=SIZES[size], fps=args.fps, seconds=secs, container="mp4")
            gt = json.loads(gt_path.read_text())
            n = gt["frames"]
            with tempfile.TemporaryDirectory(prefix="fw-video-bench-") as tmp:
                out, boxes = Path(tmp, "ours.mp4"), Path(tmp, "boxes.json")
                wall, rss, _ = timed([sys.executable, __file__, "--worker", str(clip), str(out), str(boxes),
                                      args.params], cpu)
                data = json.loads(boxes.read_text())
                f, t, longest = score(gt, ours_coverage(gt, data["covers"], data["params"]))
                same_audio = audio_packets(out) == audio_packets(clip)
                frames_ok = frame_count(out) == n
                rows.append([size, f"{secs:g}s/{n}", "facewarden", f"{n / wall:.2f}", f"{rss:.0f}",
                             f"{f / t:.4f} ({f}/{t})", str(longest), "yes" if same_audio else "NO",
                             "yes" if frames_ok else "NO"])
                notes.append(f"{size} {secs:g}s facewarden: in-process {data['facts']['total_s']} s "
                             f"(detect pass {data['facts']['detect_s']} s), tracks {data['facts']['tracks']}, "
                             f"encoder {data['facts']['encoder']}")
                if size in deface_sizes:
                    dout = Path(tmp, "deface.mp4")
                    wall, rss, _ = timed([str(DEFACE_CLI), str(clip), "-o", str(dout)], cpu)
                    script = Path(tmp, "recall.py")
                    script.write_text(DEFACE_RECALL)
                    res = subprocess.run([str(DEFACE_PY), str(script), str(clip), str(gt_path), "0.2", "1.3"],
                                         capture_output=True, text=True, timeout=7200)
                    if res.returncode != 0:
                        raise SystemExit(f"deface recall worker failed:\n{res.stderr[-3000:]}")
                    per_frame = json.loads(res.stdout.strip().splitlines()[-1])
                    f, t, longest = score(gt, per_frame)
                    has_audio = bool(audio_packets(dout))
                    rows.append([size, f"{secs:g}s/{n}", "deface", f"{n / wall:.2f}", f"{rss:.0f}",
                                 f"{f / t:.4f} ({f}/{t})", str(longest),
                                 ("yes" if audio_packets(dout) == audio_packets(clip) else "NO")
                                 if has_audio else "dropped", "yes" if frame_count(dout) == n else "NO"])
    print(fmt_table(["clip", "length/frames", "tool", "fps", "peak RSS MB", "recall (>=70% obscured)",
                     "longest run visible", "audio identical", "frame count kept"], rows))
    print()
    for n_ in notes:
        print(n_)
    print(f"\npinned to core {cpu}" if cpu is not None else "\nnot pinned", f"; load avg {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
