"""`facewarden process` as a whole command beside the `deface` CLI, on the same photos.

    uv run python bench/process_batch.py [--photos 24] [--runs 2]

Makes 24 1080p photos (wider-dev crowd photos from ../shared, scaled to 1920 px wide: read
from ../shared at bench time, never copied into the repo) and times, wall clock, whole
processes as a user runs them:
- one photo: `facewarden process` (warm caches) and `deface`;
- the batch: `facewarden process -j 1`, `-j 2` and `deface` on the folder.
deface comes from a throwaway venv (see bench/deface_compare.py: /tmp/deface-venv). Prints
seconds and images/s per command, and facewarden's speed-up over deface.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WIDER = REPO.parent / "shared" / "data" / "wider-dev" / "images"
DEFACE = Path("/tmp/deface-venv/bin/deface")


def make_photos(folder: Path, n: int) -> list[Path]:
    sources = sorted(WIDER.glob("*.jpg"))
    out = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        img = img.resize((1920, round(img.height * 1920 / img.width)), Image.Resampling.LANCZOS)
        path = folder / f"p{i:02d}.jpg"
        img.save(path, quality=92)
        out.append(path)
    return out


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({done.returncode}): {done.stderr[-800:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    fw = [sys.executable, "-m", "facewarden", "process"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        photos = make_photos(root / "in", args.photos)
        rows: dict[str, list[float]] = {}

        def run(name: str, cmd: list[str], fresh: Path | None = None) -> None:
            for _ in range(args.runs):
                for p in (fresh, root / "state"):
                    if p is not None and p.exists():
                        shutil.rmtree(p)
                rows.setdefault(name, []).append(timed(cmd, root))

        one = photos[0]
        run("facewarden, 1 photo", [*fw, str(one), "--out", str(root / "o1"), "--state", str(root / "state")],
            root / "o1")
        run("facewarden, batch -j 1", [*fw, str(root / "in"), "--out", str(root / "ob"), "--state",
                                        str(root / "state"), "-j", "1"], root / "ob")
        run("facewarden, batch -j 2", [*fw, str(root / "in"), "--out", str(root / "ob"), "--state",
                                        str(root / "state"), "-j", "2"], root / "ob")
        if DEFACE.exists():
            run("deface, 1 photo", [str(DEFACE), str(one), "-o", str(root / "d1.jpg")], root / "d1.jpg")
            # deface writes NAME_anonymized.jpg beside each input (its -o takes one file):
            # give it its own copy of the folder each run.
            copy = root / "dcopy"
            for _ in range(args.runs):
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(root / "in", copy)
                rows.setdefault("deface, batch", []).append(
                    timed([str(DEFACE), *sorted(str(p) for p in copy.glob("*.jpg"))], root))
        else:
            print(f"(deface not found at {DEFACE}: see bench/deface_compare.py to make its venv)")
        print(f"{'command':28} {'p50 s':>8} {'images/s':>9}   ({args.runs} runs, {args.photos} photos 1920 px wide)")
        for name, times in rows.items():
            n = 1 if "1 photo" in name else args.photos
            med = statistics.median(times)
            print(f"{name:28} {med:8.2f} {n / med:9.2f}")
        if "deface, batch" in rows:
            d = statistics.median(rows["deface, batch"])
            for j in ("1", "2"):
                ours = statistics.median(rows[f"facewarden, batch -j {j}"])
                print(f"speed-up over deface, batch -j {j}: {d / ours:.2f}x")
            print(f"one photo, facewarden / deface time: "
                  f"{statistics.median(rows['facewarden, 1 photo']) / statistics.median(rows['deface, 1 photo']):.2f}")


if __name__ == "__main__":
    main()
