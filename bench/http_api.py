"""The HTTP API's cost over the pipeline, under concurrency, and the console's page weight.

Starts a real daemon (SQLite queue, W worker processes, HTTP on a loopback port) in a
temporary state dir and measures, on a 1920x1080 JPEG made from a shared photo:

1. sync POST /api/v1/anonymize, one client: p50/p95 of the HTTP round trip, of the
   pipeline's own total (timings.total_ms in the audit record) and of the handler alone
   (timings.handler_ms); overhead = round trip - pipeline total (target <= 30 ms);
2. 16 concurrent clients for a bounded time: requests, errors, throughput (sync calls run in
   the API process, one at a time: the handler's models are not shared between threads);
3. the same photo as N async jobs through the queue and the W workers: throughput, for
   comparison (that is the daemon's path for every other source);
4. the console's first page load: login page + its CSS and JS, and the dashboard after
   login (HTML + CSS + JS + first stats JSON), in bytes (target <= 300 KB).

    uv run python bench/http_api.py [--requests 30] [--seconds 20] [--workers 2] [--jobs 16]

Timings depend on machine load; the figures printed say what was measured, nothing more.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facewarden.config import load_settings  # noqa: E402
from facewarden.daemon.app import Daemon  # noqa: E402
from facewarden.storage.audit import AuditLog  # noqa: E402
from facewarden.web.auth import KeyStore  # noqa: E402

PHOTO = REPO.parent / "shared" / "data" / "identities-knn" / "test" / "obama_and_biden.jpg"


def photo_1080p() -> bytes:
    with Image.open(PHOTO) as img:
        img = img.convert("RGB")
        scale = max(1920 / img.width, 1080 / img.height)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        left, top = (img.width - 1920) // 2, (img.height - 1080) // 2
        img = img.crop((left, top, left + 1920, top + 1080))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=16)
    args = ap.parse_args()

    data = photo_1080p()
    with tempfile.TemporaryDirectory(prefix="fw-bench-http-") as tmp:
        state = Path(tmp)
        settings = load_settings(None, environ={}, overrides={
            "state_dir": state, "http": {"enabled": True, "port": 0}, "workers": {"count": args.workers},
            "log": {"level": "warning"}})
        token = KeyStore(state).create("bench", ["admin"])[0]
        daemon = Daemon(settings)
        daemon.start()
        try:
            base = daemon.http.url
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
            audit = AuditLog(state)
            with httpx.Client(timeout=120) as client:
                client.post(f"{base}/api/v1/anonymize", content=data, headers=headers).raise_for_status()  # warm-up
                rtt, total, handler = [], [], []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    r = client.post(f"{base}/api/v1/anonymize", content=data, headers=headers)
                    rtt.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                    timings = audit.find_job(r.headers["x-job-id"])["timings"]
                    total.append(timings["total_ms"])
                    handler.append(timings["handler_ms"])
            over = [a - b for a, b in zip(rtt, total, strict=True)]
            print(f"sync anonymize, 1920x1080 JPEG ({len(data) // 1024} KB), {args.requests} requests, 1 client")
            for name, vals in (("http round trip", rtt), ("pipeline total", total), ("handler", handler),
                               ("overhead (round trip - pipeline)", over)):
                print(f"  {name:34} p50 {statistics.median(vals):7.1f} ms   p95 {pct(vals, 0.95):7.1f} ms")
            print(f"  overhead target <= 30 ms: {'met' if statistics.median(over) <= 30 else 'NOT met'} (p50)")

            done, errors, lock = [0], [0], threading.Lock()
            stop_at = time.monotonic() + args.seconds

            def client_loop() -> None:
                with httpx.Client(timeout=300) as c:
                    while time.monotonic() < stop_at:
                        try:
                            ok = c.post(f"{base}/api/v1/anonymize", content=data, headers=headers).status_code == 200
                        except httpx.HTTPError:
                            ok = False
                        with lock:
                            (done if ok else errors)[0] += 1

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            print(f"\n{args.clients} concurrent clients, sync, {args.seconds:.0f} s window ({wall:.1f} s incl. drain)")
            print(f"  ok {done[0]}  errors {errors[0]}  throughput {done[0] / wall:.2f} images/s")

            with httpx.Client(timeout=60) as client:
                # Warm-up: every worker process loads its models on its first job.
                warm = [client.post(f"{base}/api/v1/anonymize?async=true", content=data, headers=headers)
                        .json()["job_id"] for _ in range(args.workers * 2)]
                while any(audit.find_job(j) is None for j in warm):
                    time.sleep(0.1)
                t0 = time.perf_counter()
                ids = [client.post(f"{base}/api/v1/anonymize?async=true", content=data, headers=headers)
                       .json()["job_id"] for _ in range(args.jobs)]
                pending = set(ids)
                while pending and time.perf_counter() - t0 < 600:
                    pending = {j for j in pending if audit.find_job(j) is None}
                    time.sleep(0.05)
                wall = time.perf_counter() - t0
            print(f"\n{args.jobs} async jobs through the queue, {args.workers} worker process(es)")
            print(f"  {'unfinished ' + str(len(pending)) if pending else 'all done'}  "
                  f"throughput {(args.jobs - len(pending)) / wall:.2f} images/s")

            with httpx.Client(timeout=30) as client:
                login = client.get(f"{base}/login").content
                css = client.get(f"{base}/static/console.css").content
                js = client.get(f"{base}/static/console.js").content
                client.post(f"{base}/login", data={"key": token})
                dash = client.get(f"{base}/").content
                stats = client.get(f"{base}/console/stats").content
            first = len(login) + len(css) + len(js)
            dashboard = len(dash) + len(css) + len(js) + len(stats)
            print("\nconsole page weight (uncompressed, nothing from elsewhere)")
            print(f"  login page + css + js          {first / 1024:6.1f} KB")
            print(f"  dashboard + css + js + stats   {dashboard / 1024:6.1f} KB   target <= 300 KB: "
                  f"{'met' if dashboard <= 300 * 1024 else 'NOT met'}")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
