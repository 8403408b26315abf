"""The container image: size, start to /readyz, and one photo through `process` offline.

    uv run python bench/container.py [--image localhost/facewarden:test] [--runs 5]

Prints the image size (MB), p50/max of container start -> /readyz 200 (daemon on an empty
watch folder), and p50/max of `podman run --network=none … process PHOTO` wall time.
Needs podman and an image built by deploy/build-image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = sorted((REPO.parent / "shared" / "data" / "faces-pascal").glob("*.jpg"))[0]


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "deploy" / "podman" / "containers.conf"))
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_to_ready(image: str) -> float:
    name, port = f"fw-bench-{uuid.uuid4().hex[:8]}", free_port()
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("in", "out", "state"):
            (Path(tmp) / sub).mkdir(mode=0o777)
            (Path(tmp) / sub).chmod(0o777)
        t0 = time.perf_counter()
        podman("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--no-healthcheck",
               "-e", "FACEWARDEN_WORKERS__COUNT=1", "-p", f"127.0.0.1:{port}:8088",
               "-v", f"{tmp}/in:/data/incoming", "-v", f"{tmp}/out:/data/outgoing",
               "-v", f"{tmp}/state:/var/lib/facewarden/state", image)
        try:
            while time.perf_counter() - t0 < 120:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            return time.perf_counter() - t0
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("not ready in 120 s")
        finally:
            podman("rm", "-f", "-t", "2", name, check=False)


def process_offline(image: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("in", "out", "state"):
            (Path(tmp) / sub).mkdir()
            (Path(tmp) / sub).chmod(0o777)
        shutil.copy(PHOTO, Path(tmp) / "in" / "p.jpg")
        t0 = time.perf_counter()
        podman("run", "--rm", "--network=none", "--read-only", "--tmpfs", "/tmp", "--no-healthcheck",
               "-v", f"{tmp}/in:/in:ro", "-v", f"{tmp}/out:/out", "-v", f"{tmp}/state:/var/lib/facewarden/state",
               image, "process", "/in/p.jpg", "--out", "/out")
        took = time.perf_counter() - t0
        assert (Path(tmp) / "out" / "p.jpg").is_file()
        return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=os.environ.get("FW_CONTAINER_IMAGE", "localhost/facewarden:test"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    info = json.loads(podman("image", "inspect", args.image).stdout)[0]
    print(f"image {args.image}: {info['Size'] / 1e6:.0f} MB")
    ready = [start_to_ready(args.image) for _ in range(args.runs)]
    print(f"start -> /readyz 200: p50 {statistics.median(ready):.2f} s, max {max(ready):.2f} s ({args.runs} runs)")
    offline = [process_offline(args.image) for _ in range(args.runs)]
    print(f"process one photo, --network=none: p50 {statistics.median(offline):.2f} s, "
          f"max {max(offline):.2f} s ({args.runs} runs)")


if __name__ == "__main__":
    main()
