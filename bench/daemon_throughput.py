"""End-to-end throughput and drop-to-result latency of the daemon (embedded default).

Builds 1920×1080 group photos from the PASCAL faces set (six photos tiled 3×2, each
640×540), starts `facewarden run` with 1 and then 2 workers, and measures:
- latency: one photo at a time into an idle daemon, from the moment the file is closed
  in the incoming folder to the moment its audit record exists in the outgoing folder;
- throughput: a burst of photos dropped at once, images/s until the last record exists.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facewarden.config import default_models_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "faces-pascal"


def group_photos(n: int, out: Path) -> list[Path]:
    srcs = sorted(DATA.glob("*.jpg"))
    tiles = [np.asarray(Image.open(p).convert("RGB").resize((640, 540))) for p in srcs]
    paths = []
    for i in range(n):
        canvas = np.zeros((1080, 1920, 3), np.uint8)
        for j in range(6):
            t = tiles[(i + j) % len(tiles)]
            r, c = divmod(j, 3)
            canvas[r * 540:(r + 1) * 540, c * 640:(c + 1) * 640] = t
        p = out / f"group-{i:03d}.jpg"
        # a distinct JPEG comment per photo: identical bytes would be recorded as duplicates
        Image.fromarray(canvas).save(p, quality=92, comment=f"bench photo {i}".encode())
        paths.append(p)
    return paths


def drop(src: Path, dest: Path) -> float:
    data = src.read_bytes()
    with open(dest, "wb") as fh:
        fh.write(data)
    return time.perf_counter()


def wait_record(path: Path, timeout: float = 120) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if path.exists():
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(path)


def run(workers: int, photos: list[Path], latency_n: int, burst_n: int, tmp: Path) -> dict[str, float]:
    inc, out, state = tmp / f"in{workers}", tmp / f"out{workers}", tmp / f"state{workers}"
    for d in (inc, out, state):
        d.mkdir()
    log = open(tmp / f"daemon{workers}.log", "wb")  # noqa: SIM115 - held for the child's lifetime
    proc = subprocess.Popen([sys.executable, "-m", "facewarden", "run", "--watch", str(inc), "--out", str(out),
                             "--state", str(state), "--workers", str(workers), "--models-dir",
                             str(default_models_dir())], stdout=log, stderr=log, start_new_session=True,
                            env={**os.environ, "FACEWARDEN_LOG__FORMAT": "json"})
    try:
        # warm-up: the first job waits for workers to load their models
        # every drop gets its own photo: identical bytes would be recorded as duplicates
        fresh = iter(photos)
        for w in range(workers):
            drop(next(fresh), inc / f"warmup{w}.jpg")
            wait_record(out / f"warmup{w}.jpg.audit.json", 180)
        lat = []
        for i in range(latency_n):
            name = f"lat-{i:03d}.jpg"
            t = drop(next(fresh), inc / name)
            lat.append(wait_record(out / f"{name}.audit.json") - t)
            time.sleep(0.3)  # idle daemon between drops
        t0 = time.perf_counter()
        names = []
        for i in range(burst_n):
            name = f"burst-{i:03d}.jpg"
            drop(next(fresh), inc / name)
            names.append(name)
        last = max(wait_record(out / f"{n}.audit.json", 600) for n in names)
        elapsed = last - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
    lat_ms = np.array(lat) * 1000
    return {"workers": workers, "p50_ms": float(np.percentile(lat_ms, 50)), "p95_ms": float(np.percentile(lat_ms, 95)),
            "max_ms": float(lat_ms.max()), "images_per_s": burst_n / elapsed, "burst": burst_n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-n", type=int, default=20, help="photos dropped one at a time (default 20)")
    ap.add_argument("--burst", type=int, default=24, help="photos dropped at once for throughput (default 24)")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    try:
        photos = group_photos(args.burst + args.latency_n + 4, tmp)
        rows = [run(int(w), photos, args.latency_n, args.burst, tmp) for w in args.workers.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"daemon end-to-end, 1920x1080 group photos (6 PASCAL photos tiled), {os.cpu_count()} CPU cores")
    print(f"{'workers':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'images/s':>9} {'burst':>6}")
    for r in rows:
        print(f"{r['workers']:>7} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} {r['max_ms']:>8.0f} "
              f"{r['images_per_s']:>9.2f} {r['burst']:>6}")
    if len(rows) == 2:
        eff = rows[1]["images_per_s"] / (2 * rows[0]["images_per_s"])
        print(f"scaling efficiency (2 workers vs 2x1): {eff:.2f}")


if __name__ == "__main__":
    main()
