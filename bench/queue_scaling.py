"""Queue scaling: RabbitMQ versus the embedded SQLite queue.

Prints (never asserts):

1. queue overhead per job with a no-op handler: put + get + ack, one job at a time
   (round trip) and in a batch (put all, then drain), RabbitMQ vs SQLite;
2. throughput of the real anonymize pipeline on the same real photos with 1 and 2 worker
   processes, per backend, and scaling efficiency = throughput(2) / (2 x throughput(1));
3. event-to-result latency p50/p95 over RabbitMQ with 2 workers, jobs paced at ~60% of
   the measured capacity (queueing delay of a burst would otherwise dominate).

Targets: scaling efficiency >= 0.9; queue overhead < 5 ms/job. The machine has 2 cores
shared with other work: figures measured while anything else runs are noisy.

    uv run python bench/queue_scaling.py [--jobs 24] [--overhead-jobs 500] [--no-pin]

By default each worker process is pinned to its own core (worker i -> core i): the model
runtimes otherwise spread one image over both cores, and 2 workers then compete for the
same 2 cores, which measures the CPU, not the queue. --no-pin shows that case.

Needs RabbitMQ on 127.0.0.1:5672 (started with `rabbitmq-server -detached` if down).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from facewarden.config import default_models_dir, dump_for_child  # noqa: E402
from facewarden.config.schema import RabbitMQConfig, Settings  # noqa: E402
from facewarden.daemon.jobs import Job  # noqa: E402
from facewarden.daemon.pool import limit_native_threads  # noqa: E402

_CTX = mp.get_context("spawn")


def ensure_broker(url: str) -> None:
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
        return
    except Exception:
        pass
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            return
        except Exception:
            time.sleep(0.5)
    raise SystemExit("RabbitMQ is not reachable")


def rabbit_cfg(url: str) -> RabbitMQConfig:
    tag = uuid.uuid4().hex[:8]
    return RabbitMQConfig(
        url=url,
        queue=f"fwbench.{tag}.jobs",
        exchange=f"fwbench.{tag}",
        dead_letter_exchange=f"fwbench.{tag}.dlx",
        results_exchange=f"fwbench.{tag}.results",
    )


def drop_rabbit(cfg: RabbitMQConfig) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(cfg.url))
    ch = conn.channel()
    for q in (cfg.queue, f"{cfg.queue}.dead"):
        ch.queue_delete(q)
    for ex in (cfg.exchange, cfg.dead_letter_exchange):
        ch.exchange_delete(ex)
    conn.close()


def open_queue(backend: str, state: Path, cfg: RabbitMQConfig | None):
    if backend == "rabbitmq":
        from facewarden.daemon.queues.rabbitmq import RabbitMQQueue

        return RabbitMQQueue(cfg)
    from facewarden.daemon.queues.sqlite import SqliteQueue

    return SqliteQueue(state / "queue.db")


def noop_job(i: int) -> Job:
    return Job(handler="noop", params={}, store="raw", key=f"k{i}.jpg", target="out")


# -- 1. queue overhead -------------------------------------------------------------------


def overhead(backend: str, n: int, url: str) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="fwbench-q-"))
    cfg = rabbit_cfg(url) if backend == "rabbitmq" else None
    q = open_queue(backend, state, cfg)
    try:
        q.put(noop_job(-1))  # connect / create
        lease = q.get("w", 5)
        q.ack(lease)
        t = time.perf_counter()
        for i in range(n):
            q.put(noop_job(i))
            lease = q.get("w", 5)
            assert lease is not None
            q.ack(lease)
        round_trip = (time.perf_counter() - t) / n * 1000
        t = time.perf_counter()
        for i in range(n):
            q.put(noop_job(i))
        put_ms = (time.perf_counter() - t) / n * 1000
        t = time.perf_counter()
        for _ in range(n):
            lease = q.get("w", 5)
            assert lease is not None
            q.ack(lease)
        drain_ms = (time.perf_counter() - t) / n * 1000
    finally:
        q.close()
        if cfg is not None:
            drop_rabbit(cfg)
        shutil.rmtree(state, ignore_errors=True)
    return {
        "round_trip_ms": round_trip,
        "put_ms": put_ms,
        "get_ack_ms": drain_ms,
        "batch_ms": put_ms + drain_ms,
    }


# -- 2./3. real pipeline with worker processes -------------------------------------------


def worker_main(settings_json: str, name: str, stop: Any, done: Any, core: int | None) -> None:
    if core is not None:
        # One core per worker process: the model runtimes spread one image over every core
        # they may use, which hides what the queue does when more workers are added.
        os.sched_setaffinity(0, {core})
    # the same per-worker thread budget as the daemon's worker processes
    limit_native_threads(Settings.model_validate_json(settings_json).workers.count)
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.pipeline import Pipeline
    from facewarden.daemon.queues.factory import open_queue as factory_open
    from facewarden.daemon.worker import run_worker
    from facewarden.storage.stores import open_stores

    settings = Settings.model_validate_json(settings_json)
    configure_logging("json", "warning")
    Pipeline(settings, open_stores(settings.all_stores())).warm_up()  # models, once
    queue = factory_open(settings)
    done.put(("ready", name, time.time(), "", 0.0))
    cpu0 = time.process_time()

    def on_outcome(outcome: Any) -> None:
        # CPU seconds this process (all its threads) spent since it was ready.
        cpu = time.process_time() - cpu0
        done.put(("done", outcome.record.get("job_id"), time.time(), outcome.outcome, (name, cpu)))

    try:
        run_worker(settings, queue, stop, name=name, on_outcome=on_outcome)
    finally:
        queue.close()


def make_photos(n: int, raw: Path, start: int = 0) -> list[str]:
    """Distinct copies of real photos: each carries its index in a JPEG comment, so each
    has its own sha256 (the idempotency index would skip repeats); pixels are untouched."""
    from PIL import Image

    sources = sorted((DATA / "faces-pascal").glob("*.jpg"))
    raw.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(start, start + n):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92, comment=f"facewarden bench copy {i}".encode())
        key = f"p{i:04d}.jpg"
        (raw / key).write_bytes(buf.getvalue())
        keys.append(key)
    return keys


def init_audit(settings: Settings) -> None:
    """Creates the audit database before several processes open it at once (two processes
    switching a fresh SQLite file to WAL together can fail with "database is locked")."""
    from facewarden.storage.audit import AuditLog

    audit = AuditLog(settings.state_dir)
    audit.count()
    audit.close()


class Run:
    def __init__(self, backend: str, workers: int, url: str, root: Path, keys: list[str], pin: bool = True):
        self.backend, self.workers, self.pin = backend, workers, pin
        self.dir = root / f"{backend}-{workers}-{uuid.uuid4().hex[:6]}"
        self.cfg = rabbit_cfg(url) if backend == "rabbitmq" else None
        self.settings = Settings.model_validate(
            {
                "state_dir": str(self.dir / "state"),
                "models_dir": str(default_models_dir()),
                "stores": {
                    "raw": {"type": "local", "root": str(root / "raw"), "fsync": False},
                    "out": {"type": "local", "root": str(self.dir / "out"), "fsync": False},
                },
                "queue": {
                    "backend": backend,
                    **({"rabbitmq": self.cfg.model_dump()} if self.cfg else {}),
                },
                "log": {"format": "json", "level": "warning"},
                "workers": {"count": workers},
            }
        )
        self.keys = keys

    def __enter__(self) -> Run:
        init_audit(self.settings)
        self.queue = open_queue(self.backend, Path(self.settings.state_dir), self.cfg)
        self.stop = _CTX.Event()
        self.done = _CTX.Queue()
        self.procs = [
            _CTX.Process(
                target=worker_main,
                args=(
                    dump_for_child(self.settings),
                    f"w{i}",
                    self.stop,
                    self.done,
                    (i % (os.cpu_count() or 1)) if self.pin else None,
                ),
            )
            for i in range(self.workers)
        ]
        for p in self.procs:
            p.start()
        ready = 0
        while ready < self.workers:
            kind, *_ = self.done.get(timeout=300)  # models loaded, consuming
            ready += kind == "ready"
        return self

    def submit(self, key: str) -> tuple[str, float]:
        job = Job(handler="anonymize", params={}, store="raw", key=key, target="out")
        t = time.time()
        job.hints["event_at"] = t
        self.queue.put(job)
        return job.id, t

    def collect(self, n: int) -> dict[str, tuple[float, str]]:
        got: dict[str, tuple[float, str]] = {}
        self.cpu: dict[str, float] = {}
        while len(got) < n:
            kind, job_id, t, outcome, extra = self.done.get(timeout=300)
            if kind == "done":
                got[job_id] = (t, outcome)
                name, cpu = extra
                self.cpu[name] = max(cpu, self.cpu.get(name, 0.0))
        return got

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(60)
            if p.is_alive():
                p.kill()
        self.queue.close()
        if self.cfg is not None:
            drop_rabbit(self.cfg)


def throughput(backend: str, workers: int, url: str, root: Path, keys: list[str], pin: bool) -> dict[str, Any]:
    with Run(backend, workers, url, root, keys, pin) as run:
        t0 = time.time()
        sent = dict(run.submit(k) for k in keys)
        got = run.collect(len(keys))
        t1 = max(t for t, _ in got.values())
        cpu = sum(run.cpu.values())
    outcomes = {o for _, o in got.values()}
    lat = sorted((got[j][0] - sent[j]) * 1000 for j in sent)
    return {
        "images_per_s": len(keys) / (t1 - t0),
        "cpu_ms_per_image": cpu / len(keys) * 1000,
        "cpu_share": cpu / ((t1 - t0) * workers),
        "outcomes": sorted(outcomes),
        "burst_p50_ms": statistics.median(lat),
    }


def direct_main(settings_json: str, keys: list[str], core: int | None, go: Any, out: Any) -> None:
    """Control without any queue: the same pipeline called directly on a share of photos."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    limit_native_threads(Settings.model_validate_json(settings_json).workers.count)
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.pipeline import Pipeline
    from facewarden.storage.stores import open_stores

    settings = Settings.model_validate_json(settings_json)
    configure_logging("json", "warning")
    try:
        pipeline = Pipeline(settings, open_stores(settings.all_stores()))
        pipeline.warm_up()
        out.put(("ready", 0.0, 0.0))
        go.wait()
        cpu0 = time.process_time()
        for key in keys:
            job = Job(handler="anonymize", params={}, store="raw", key=key, target="out")
            pipeline.process(job)
        out.put(("done", time.time(), time.process_time() - cpu0))
    except BaseException as exc:
        out.put(("error", 0.0, repr(exc)))
        raise


def direct(workers: int, url: str, root: Path, keys: list[str], pin: bool) -> dict[str, float]:
    run = Run("sqlite", workers, url, root, keys, pin)  # only for its settings
    init_audit(run.settings)
    go, out = _CTX.Event(), _CTX.Queue()
    shares = [keys[i::workers] for i in range(workers)]
    procs = [
        _CTX.Process(
            target=direct_main,
            args=(
                dump_for_child(run.settings),
                share,
                (i % (os.cpu_count() or 1)) if pin else None,
                go,
                out,
            ),
        )
        for i, share in enumerate(shares)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        if out.get(timeout=300)[0] == "error":
            raise SystemExit("a direct-run process failed; see stderr")
    t0 = time.time()
    go.set()
    ends = [out.get(timeout=600) for _ in procs]
    if any(e[0] == "error" for e in ends):
        raise SystemExit(f"a direct-run process failed: {ends}")
    for p in procs:
        p.join(30)
    t1 = max(e[1] for e in ends)
    cpu = sum(e[2] for e in ends)
    return {"images_per_s": len(keys) / (t1 - t0), "cpu_ms_per_image": cpu / len(keys) * 1000}


def latency(url: str, root: Path, keys: list[str], rate: float, pin: bool) -> dict[str, float]:
    with Run("rabbitmq", 2, url, root, keys, pin) as run:
        sent: dict[str, float] = {}
        interval = 1.0 / rate
        nxt = time.time()
        for k in keys:
            now = time.time()
            if now < nxt:
                time.sleep(nxt - now)
            job_id, t = run.submit(k)
            sent[job_id] = t
            nxt += interval
        got = run.collect(len(keys))
    lat = sorted((got[j][0] - sent[j]) * 1000 for j in sent)
    q = statistics.quantiles(lat, n=20)
    return {"p50_ms": statistics.median(lat), "p95_ms": q[18], "n": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=24, help="photos per throughput run")
    ap.add_argument("--overhead-jobs", type=int, default=500)
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="let worker processes float over all cores (default: one core each)",
    )
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = ap.parse_args()
    from facewarden.daemon.logs import configure_logging

    configure_logging("json", "warning")
    ensure_broker(args.url)
    print(
        f"host {socket.gethostname()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f} "
        "(other work on this machine makes every figure noisy)"
    )

    print(f"\n1. queue overhead, no-op handler, {args.overhead_jobs} jobs (ms per job)")
    over = {b: overhead(b, args.overhead_jobs, args.url) for b in ("sqlite", "rabbitmq")}
    print(f"   {'backend':10} {'round trip':>11} {'put':>8} {'get+ack':>8} {'batch':>8}")
    for b, r in over.items():
        print(f"   {b:10} {r['round_trip_ms']:11.2f} {r['put_ms']:8.2f} {r['get_ack_ms']:8.2f} {r['batch_ms']:8.2f}")
    rt = over["rabbitmq"]["round_trip_ms"] - over["sqlite"]["round_trip_ms"]
    bt = over["rabbitmq"]["batch_ms"] - over["sqlite"]["batch_ms"]
    print(
        f"   RabbitMQ minus SQLite: round trip {rt:+.2f} ms/job, batch {bt:+.2f} ms/job (target: overhead < 5 ms/job)"
    )

    root = Path(tempfile.mkdtemp(prefix="fwbench-"))
    try:
        keys = make_photos(args.jobs * 2, root / "raw")
        print(f"\n2. anonymize throughput, {args.jobs} real photos per run (faces-pascal, ~500x375)")
        res: dict[tuple[str, int], dict[str, Any]] = {}
        batches = iter([keys[: args.jobs], keys[args.jobs :]])
        for backend in ("sqlite", "rabbitmq"):
            batch = next(batches)
            for w in (1, 2):
                res[(backend, w)] = r = throughput(backend, w, args.url, root, batch, not args.no_pin)
                print(
                    f"   {backend:9} workers={w}: {r['images_per_s']:6.2f} images/s "
                    f"({r['cpu_ms_per_image']:.0f} ms CPU/image, each worker got "
                    f"{100 * r['cpu_share']:.0f}% of a core; outcomes {r['outcomes']})"
                )
        for backend in ("sqlite", "rabbitmq"):
            one, two = res[(backend, 1)], res[(backend, 2)]
            eff = two["images_per_s"] / (2 * one["images_per_s"])
            per_cpu = one["cpu_ms_per_image"] / two["cpu_ms_per_image"]
            print(
                f"   scaling efficiency {backend}: {eff:.2f} (target >= 0.9); CPU cost per "
                f"image 2 workers vs 1: {1 / per_cpu:.2f}x (1.00 = no per-job cost added by "
                "a second worker; a CPU share under 100% = cores taken by other work)"
            )
        d1 = direct(1, args.url, root, keys[: args.jobs], not args.no_pin)
        d2 = direct(2, args.url, root, keys[args.jobs :], not args.no_pin)
        print(
            f"   control, no queue (pipeline called directly): 1 process {d1['images_per_s']:.2f}"
            f" images/s ({d1['cpu_ms_per_image']:.0f} ms CPU/image), 2 processes "
            f"{d2['images_per_s']:.2f} images/s ({d2['cpu_ms_per_image']:.0f} ms CPU/image); "
            f"scaling efficiency {d2['images_per_s'] / (2 * d1['images_per_s']):.2f}"
        )
        rate = 0.6 * res[("rabbitmq", 2)]["images_per_s"]
        print(
            f"\n3. event-to-result latency, RabbitMQ, 2 workers, paced at {rate:.2f} jobs/s (60% of measured capacity)"
        )
        lat = latency(
            args.url,
            root,
            make_photos(args.jobs, root / "raw", start=2 * args.jobs),
            rate,
            not args.no_pin,
        )
        print(f"   p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms over {lat['n']} jobs")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
