"""Test clips the project makes itself: a virtual camera pans and zooms over real photos
with known face boxes, with a tone as the audio track, and per-frame ground truth.

The photos are ``../shared/data/faces-pascal`` (9 PASCAL VOC group photos, 43 faces boxed
by dlib's imglab annotation, see bench/common.py). They are laid out on a large canvas; the
camera window moves along a smooth path and its size breathes (zoom), so faces move,
grow and shrink, enter and leave the frame from one frame to the next. Every GT box is
mapped through the same window, frame by frame. No third-party video is ever used.

    uv run python bench/make_clips.py --out /tmp/fw-clips            # 720p, 1080p, 4K, 10 s each
    uv run python bench/make_clips.py --sizes 1080p --fps 25,50 --seconds 4 --container mkv

Ground truth: ``<clip>.gt.json`` = {"width", "height", "fps", "frames", "boxes": [[[id, x, y, w, h],
...] per frame]}; ``id`` names one GT face across frames (photo index * 100 + box index),
boxes are clipped to the frame and listed only when at least half of the face is inside.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PASCAL, Sample, load_pascal

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
AUDIO = {"mp4": "aac", "mov": "aac", "mkv": "aac", "webm": "libopus", "avi": "pcm_s16le"}
MUXER = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi"}


def build_canvas(samples: list[Sample], width: int, cols: int = 3, gap: int = 24
                 ) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """The photos in a grid on a grey canvas ``width`` px wide; GT boxes as (id, x, y, w, h)."""
    cell = (width - gap * (cols + 1)) / cols
    rows = math.ceil(len(samples) / cols)
    scales = [cell / s.rgb.shape[1] for s in samples]
    row_h = [max(samples[i].rgb.shape[0] * scales[i] for i in range(r * cols, min(len(samples), (r + 1) * cols)))
             for r in range(rows)]
    height = int(sum(row_h) + gap * (rows + 1))
    canvas = np.full((height, width, 3), 110, np.uint8)
    boxes = []
    y = gap
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if i >= len(samples):
                break
            s, k = samples[i], scales[i]
            x = int(gap + c * (cell + gap))
            img = cv2.resize(s.rgb, (round(s.rgb.shape[1] * k), round(s.rgb.shape[0] * k)),
                             interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
            canvas[int(y):int(y) + img.shape[0], x:x + img.shape[1]] = img
            for j, (bx, by, bw, bh) in enumerate(s.boxes):
                boxes.append((i * 100 + j, x + bx * k, int(y) + by * k, bw * k, bh * k))
        y += row_h[r] + gap
    return canvas, boxes


def camera(t: float, cw: int, ch: int, aspect: float, zoom: tuple[float, float]) -> tuple[float, float, float, float]:
    """The window (x, y, w, h) on the canvas at time t (seconds): a Lissajous pan whose
    size breathes between the two zoom fractions of the canvas."""
    z = zoom[0] + (zoom[1] - zoom[0]) * (0.5 + 0.5 * math.sin(2 * math.pi * t / 7.0))
    w = min(cw, ch * aspect) * z
    h = w / aspect
    cx = cw / 2 + (cw - w) / 2 * math.sin(2 * math.pi * t / 5.0)
    cy = ch / 2 + (ch - h) / 2 * math.sin(2 * math.pi * t / 3.7 + 1.0)
    return cx - w / 2, cy - h / 2, w, h


def frame_at(canvas: np.ndarray, boxes, t: float, size: tuple[int, int], zoom: tuple[float, float]):
    W, H = size
    ch, cw = canvas.shape[:2]
    x, y, w, _h = camera(t, cw, ch, W / H, zoom)
    s = W / w
    m = np.array([[s, 0, -x * s], [0, s, -y * s]], np.float32)
    img = cv2.warpAffine(canvas, m, (W, H), flags=cv2.INTER_LINEAR, borderValue=(110, 110, 110))
    gt = []
    for fid, bx, by, bw, bh in boxes:
        x0, y0, x1, y1 = (bx - x) * s, (by - y) * s, (bx + bw - x) * s, (by + bh - y) * s
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        if (cx1 - cx0) * (cy1 - cy0) < 0.5 * (x1 - x0) * (y1 - y0):
            continue
        gt.append([fid, round(cx0, 1), round(cy0, 1), round(cx1 - cx0, 1), round(cy1 - cy0, 1)])
    return img, gt


def make_clip(path: Path, *, size: tuple[int, int] = (640, 360), fps: float = 25, seconds: float = 2.0,
              container: str = "mp4", audio: bool = True, rotation: int = 0, zoom: tuple[float, float] = (0.45, 0.8),
              metadata: dict[str, str] | None = None, crf: int = 18, samples: list[Sample] | None = None,
              canvas_width: int | None = None, chapters: list[str] | None = None) -> dict:
    """Writes one clip and returns its ground truth (also written to ``<path>.gt.json``).

    ``rotation``: a display-matrix rotation (degrees, counter-clockwise) stored in the
    video stream, the way phones record portrait video; the pixels are stored turned back
    so that the displayed (upright) frames equal the unrotated clip and the GT stays valid.
    """
    samples = samples if samples is not None else load_pascal(PASCAL)
    W, H = size
    canvas, boxes = build_canvas(samples, canvas_width or max(1600, int(W * 1.6)))
    rate = Fraction(fps).limit_denominator(1001)
    n = max(1, round(seconds * float(rate)))
    out = av.open(str(path), "w", format=MUXER[container])
    if metadata:
        out.metadata.update(metadata)
    if chapters:  # named chapters, evenly spread (what editing tools write)
        span = max(1, round(seconds * 1000 / len(chapters)))
        out.set_chapters([{"id": i + 1, "start": i * span, "end": (i + 1) * span, "time_base": Fraction(1, 1000),
                           "metadata": {"title": t}} for i, t in enumerate(chapters)])
    codec = "libvpx-vp9" if container == "webm" else "libx264"
    opts = ({"crf": str(crf + 12), "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
            if codec == "libvpx-vp9" else {"crf": str(crf), "preset": "ultrafast"})
    vs = out.add_stream(codec, rate=rate, options=opts)
    k = round(rotation / 90) % 4
    vs.width, vs.height = (W, H) if k % 2 == 0 else (H, W)
    vs.pix_fmt = "yuv420p"
    if k:
        vs.set_display_rotation(rotation)
    as_ = None
    sr = 48000
    if audio:
        as_ = out.add_stream(AUDIO[container], rate=sr)
        as_.layout = "mono"
    all_gt = []
    for i in range(n):
        img, gt = frame_at(canvas, boxes, i / float(rate), size, zoom)
        all_gt.append(gt)
        if k:  # store pixels turned so that the display rotation turns them upright
            img = np.ascontiguousarray(np.rot90(img, -k))
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = i
        for p in vs.encode(f):
            out.mux(p)
    for p in vs.encode(None):
        out.mux(p)
    if as_ is not None:
        total = round(n / float(rate) * sr)
        chunk = as_.codec_context.frame_size or 1024
        fmt = as_.codec_context.format.name
        for start in range(0, total, chunk):
            t = (np.arange(start, min(total, start + chunk)) / sr).astype(np.float64)
            tone = 0.3 * np.sin(2 * math.pi * 440.0 * t)
            if fmt.startswith("s16"):
                arr = (tone * 32767).astype(np.int16)[None, :]
            else:
                arr = tone.astype(np.float32)[None, :]
            af = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
            af.sample_rate = sr
            af.pts = start
            for p in as_.encode(af):
                out.mux(p)
        for p in as_.encode(None):
            out.mux(p)
    out.close()
    gt = {"width": W, "height": H, "fps": float(rate), "frames": n, "boxes": all_gt}
    Path(str(path) + ".gt.json").write_text(json.dumps(gt, separators=(",", ":")))
    return gt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fw-clips"))
    ap.add_argument("--sizes", default="720p,1080p,4k")
    ap.add_argument("--fps", default="30", help="comma-separated frame rates, e.g. 25,29.97,60")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--container", default="mp4", choices=sorted(MUXER))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    samples = load_pascal(PASCAL)
    for name in args.sizes.split(","):
        for fps in args.fps.split(","):
            path = args.out / f"pan-{name}-{fps}fps.{args.container}"
            gt = make_clip(path, size=SIZES[name.lower()], fps=float(fps), seconds=args.seconds,
                           container=args.container, samples=samples)
            faces = sum(len(b) for b in gt["boxes"])
            print(f"{path}: {gt['width']}x{gt['height']} {gt['fps']:.3f} fps, {gt['frames']} frames, "
                  f"{faces} GT face-frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
