"""End-to-end idphoto latency (p50/p95) and compliance over the portraits in ../shared/data.

Portraits: idphoto-specs/demo/images and identities-knn (train and test; the two-person
test photos are expected rejections and are reported as such). Each accepted photo is
checked independently of the handler's own numbers: exact pixel size, 300 dpi, top row
equal to the background colour (JPEG: within 4 levels), and head geometry re-measured on
the output (crown = first row leaving the flat background, chin = detector box bottom).

    uv run python bench/idphoto_compliance.py [--presets 2-inch,us-passport] [--colours blue,red]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facewarden.config import default_models_dir
from facewarden.errors import InputRejected
from facewarden.handlers.base import HandlerContext
from facewarden.handlers.idphoto import IdPhotoHandler
from facewarden.handlers.idphoto_presets import PRESETS, parse_colour
from facewarden.handlers.imageio import decode

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def portraits() -> list[Path]:
    files = sorted((DATA / "idphoto-specs" / "demo" / "images").glob("*.jpg"))
    files += sorted(p for p in (DATA / "identities-knn").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    return files


def measure(photo: np.ndarray, bg: tuple[int, int, int], detector) -> tuple[float, float] | None:
    h, w = photo.shape[:2]
    diff = np.abs(photo.astype(int) - np.array(bg)).max(axis=2)
    central = diff[:, w // 3: 2 * w // 3] > 40
    crown = int(np.argmax(central.mean(axis=1) > 0.05))
    faces = detector.detect(photo)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.w * f.h)
    return crown / h, (face.y + face.h - crown) / h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="1-inch,2-inch,schengen,us-passport")
    ap.add_argument("--colours", default="blue,red,white")
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument("--segmenter", default="fused")
    args = ap.parse_args()

    handler = IdPhotoHandler()
    ctx = HandlerContext(args.models_dir)
    handler.warm_up(ctx, {"segmenter": args.segmenter})
    detector = handler._detector
    lat: list[float] = []
    rejected: dict[str, int] = {}
    n = size_ok = colour_ok = geo_ok = 0
    for path in portraits():
        raw = path.read_bytes()
        for preset in args.presets.split(","):
            for colour in args.colours.split(","):
                params = handler.validate_params({"size": preset, "background": colour,
                                                  "segmenter": args.segmenter})
                t0 = time.perf_counter()
                try:
                    res = handler.run(decode(raw), params, ctx)
                except InputRejected as exc:
                    rejected[f"{path.name}:{exc.code}"] = rejected.get(f"{path.name}:{exc.code}", 0) + 1
                    continue
                finally:
                    lat.append(time.perf_counter() - t0)
                n += 1
                p, bg = PRESETS[preset], parse_colour(colour)
                im = Image.open(io.BytesIO(res.outputs[0].data))
                photo = np.asarray(im.convert("RGB"))
                size_ok += im.size == (p.width_px, p.height_px) and tuple(map(round, im.info["dpi"])) == (300, 300)
                colour_ok += int(np.abs(photo[0].astype(int) - np.array(bg)).max() <= 4)
                m = measure(photo, bg, detector)
                geo_ok += bool(m and abs(m[0] - p.top_ratio) <= p.top_tol and abs(m[1] - p.head_ratio) <= p.head_tol)
    lat_ms = np.array(lat) * 1000
    print(f"idphoto end-to-end ({args.segmenter}; noisy: shared 2-core machine): {len(lat)} runs, "
          f"p50 {np.percentile(lat_ms, 50):.0f} ms, p95 {np.percentile(lat_ms, 95):.0f} ms")
    print(f"accepted {n}; size+dpi compliance {size_ok}/{n}, colour {colour_ok}/{n}, head geometry {geo_ok}/{n}")
    print("rejections (photo:reason -> runs):")
    for k, v in sorted(rejected.items()):
        print(f"  {k} -> {v}")


if __name__ == "__main__":
    main()
