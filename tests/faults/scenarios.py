"""Outage scenarios against real daemon processes, shared by tests/faults and bench/faults.py.

Each scenario builds a small world (folders, a bucket on moto's HTTP server, RabbitMQ,
a fault proxy or a tmpfs in between), starts ``facewarden run`` as a subprocess, drops
distinct real photos, injects its fault, ends it, waits until every input has a result,
and returns a ``Report``: inputs, results, lost, doubled, partial objects, whether
``facewarden audit verify`` passed, the time from the end of the fault to the last
result, and when ``/readyz`` flipped to 503 and back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from daemon_harness import DATA, MODELS, DaemonProcess, audit_rows, wait_for
from PIL import Image

from faults.proxy import FaultProxy

PHOTOS = sorted((DATA / "faces-pascal").glob("*.jpg"))
RABBIT = ("127.0.0.1", 5672)


@dataclass
class Report:
    scenario: str
    inputs: int = 0
    results: int = 0
    lost: int = 0
    doubled: int = 0
    partial: int = 0
    audit_ok: bool = False
    audit_problems: list[str] = field(default_factory=list)
    fault_s: float = 0.0
    done_after_recovery_s: float | None = None
    ready_down_after_s: float | None = None
    ready_up_after_s: float | None = None
    down_named: list[str] = field(default_factory=list)
    #: /metrics lines about stores and breakers read just before the fault ended.
    metrics_during: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.doubled == 0 and self.partial == 0 and self.audit_ok
                and self.results == self.inputs)


def photo_variant(i: int) -> bytes:
    """Distinct bytes for input ``i``: a real photo, cropped by a few pixels."""
    src = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
    k = 1 + i // len(PHOTOS)
    img = src.crop((k, k, src.width - k, src.height - k))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReadyWatch:
    """Polls /readyz every 0.2 s and remembers each flip (time, ok, failing checks)."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.flips: list[tuple[float, bool, list[str]]] = []
        #: Every poll that answered 503: (time, failing checks).
        self.failing: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: bool | None = None
        while not self._stop.wait(0.2):
            try:
                r = httpx.get(self.url, timeout=2)
                ok = r.status_code == 200
                failing = [k for k, v in r.json().get("checks", {}).items() if not v]
            except Exception:  # noqa: BLE001 - daemon starting or stopped
                continue
            now = time.monotonic()
            if not ok:
                self.failing.append((now, failing))
            if ok != last:
                self.flips.append((now, ok, failing))
                last = ok

    def first(self, ok: bool, after: float) -> tuple[float, list[str]] | None:
        for t, state, failing in self.flips:
            if t >= after and state == ok:
                return t, failing
        return None

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(lambda: bool(self.flips) and self.flips[-1][1], timeout, f"200 from {self.url}")

    def stop(self) -> None:
        self._stop.set()


class World:
    """Folders or buckets, config, daemon; subclasses say where inputs and results live."""

    name = "world"

    def __init__(self, root: Path, *, workers: int = 2, queue: str = "sqlite", retry_budget: float = 3600,
                 out_dir: Path | None = None, broker_proxy: FaultProxy | None = None,
                 originals: str = "keep"):
        self.root = root
        self.originals = originals
        self.state = root / "state"
        self.incoming = root / "incoming"
        self.outgoing = out_dir or root / "outgoing"
        for p in (self.state, self.incoming, self.outgoing):
            p.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.workers, self.queue, self.retry_budget = workers, queue, retry_budget
        self.broker_proxy = broker_proxy
        self.tag = uuid.uuid4().hex[:8]
        self.config = root / "fw.toml"
        self.config.write_text(self.config_text())
        self.daemon: DaemonProcess | None = None
        self.watch: ReadyWatch | None = None
        self.expected: set[str] = set()

    # -- config ------------------------------------------------------------------------
    def queue_text(self) -> str:
        if self.queue != "rabbitmq":
            return ""
        assert self.broker_proxy is not None
        return f"""
[queue]
backend = "rabbitmq"
[queue.rabbitmq]
url = "amqp://guest:guest@{self.broker_proxy.address}/%2F"
queue = "fwfault.{self.tag}.jobs"
exchange = "fwfault.{self.tag}"
dead_letter_exchange = "fwfault.{self.tag}.dlx"
results_exchange = "fwfault.{self.tag}.results"
heartbeat = 5
publish_timeout = 5.0
reconnect_max_delay = 1.0
"""

    def stores_text(self) -> str:
        return f"""
[stores.incoming]
type = "local"
root = "{self.incoming}"
[stores.outgoing]
type = "local"
root = "{self.outgoing}"
[[sources]]
name = "incoming"
store = "incoming"
stability_delay = 0.3
rescan_interval = 3
[[routes]]
source = "incoming"
handler = "anonymize"
target = "outgoing"
originals = "{self.originals}"
"""

    def config_text(self) -> str:
        return f"""
state_dir = "{self.state}"
models_dir = "{MODELS}"
[workers]
count = {self.workers}
backoff_base = 0.2
backoff_max = 5
retry_budget = {self.retry_budget}
{self.stores_text()}
{self.queue_text()}
[http]
enabled = true
port = {self.port}
[log]
format = "json"
"""

    # -- inputs and results -------------------------------------------------------------
    def drop(self, i: int) -> None:
        key = f"in{i:03d}.jpg"
        data = photo_variant(i)
        tmp = self.incoming / f".{key}.part"
        tmp.write_bytes(data)
        os.replace(tmp, self.incoming / key)
        self.expected.add(key)

    def result_keys(self) -> list[str]:
        return [p.relative_to(self.outgoing).as_posix() for p in self.outgoing.rglob("*")
                if p.is_file() and not p.name.endswith(".audit.json") and not p.name.startswith(".")]

    def read_result(self, key: str) -> bytes | None:
        p = self.outgoing / key
        return p.read_bytes() if p.exists() else None

    def leftovers(self) -> list[str]:
        """Temp files of interrupted writes (a partial object would be one of these)."""
        return [p.name for p in self.outgoing.rglob(".fw-tmp-*")]

    def done_count(self) -> int:
        return len(set(self.result_keys()) & self.expected)

    # -- daemon --------------------------------------------------------------------------
    def start(self) -> None:
        self.daemon = DaemonProcess(self.config, self.root / "daemon.log")
        if self.watch is None:
            self.watch = ReadyWatch(self.port)
        self.daemon.wait_event("worker.ready", count=self.workers, timeout=180)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
            self.daemon = None

    def close(self) -> None:
        self.stop()
        if self.watch is not None:
            self.watch.stop()

    def wait_done(self, timeout: float) -> float | None:
        """Seconds until every input has a result (None: not within ``timeout``)."""
        t0 = time.monotonic()
        with contextlib.suppress(AssertionError):
            wait_for(lambda: self.done_count() >= len(self.expected), timeout, "all results")
            return time.monotonic() - t0
        return None

    def settle(self, seconds: float = 2.0) -> None:
        """Lets late duplicates (if any) show up before counting."""
        time.sleep(seconds)

    def verify_audit(self) -> tuple[bool, list[str]]:
        proc = subprocess.run([sys.executable, "-m", "facewarden", "audit", "verify", "--config", str(self.config)],
                              capture_output=True, text=True, timeout=120)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip().splitlines()[-5:]

    def report(self, name: str) -> Report:
        rep = Report(name, inputs=len(self.expected))
        rows = [r for r in audit_rows(self.state) if r.get("kind", "job") == "job"]
        ok_by_output: Counter[str] = Counter()
        sha_by_output: dict[str, str] = {}
        for r in rows:
            if r.get("outcome") == "ok":
                for o in r.get("outputs", []):
                    ok_by_output[o["key"]] += 1
                    sha_by_output[o["key"]] = o["sha256"]
        results = set(self.result_keys())
        rep.results = len(results & self.expected)
        rep.lost = len(self.expected - {k for k in results if ok_by_output[k] >= 1})
        rep.doubled = sum(1 for k in self.expected if ok_by_output[k] > 1)
        partial = list(self.leftovers())
        for key in results & self.expected:
            data = self.read_result(key)
            if data is None or hashlib.sha256(data).hexdigest() != sha_by_output.get(key):
                partial.append(key)
        rep.partial = len(partial)
        rep.audit_ok, rep.audit_problems = self.verify_audit()
        return rep


class S3World(World):
    """Input bucket (listed by a reconcile source) -> output bucket, both reached through
    ``s3_proxy``; the test puts inputs straight into moto, as an uploader would."""

    name = "s3"

    def __init__(self, root: Path, *, moto: str, s3_proxy: FaultProxy, **kw: Any):
        import boto3

        self.moto, self.s3_proxy = moto, s3_proxy
        self.s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
        self.raw, self.out = f"raw-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=self.raw)
        self.s3.create_bucket(Bucket=self.out)
        super().__init__(root, **kw)

    def stores_text(self) -> str:
        store = (f'type = "s3"\nendpoint_url = "http://{self.s3_proxy.address}"\nregion = "us-east-1"\n'
                 'addressing_style = "path"\nconnect_timeout = 1.0\nread_timeout = 3.0\nmax_attempts = 2\n')
        return f"""
[stores.raw]
bucket = "{self.raw}"
{store}
[stores.out]
bucket = "{self.out}"
{store}
[[sources]]
type = "reconcile"
name = "reconcile-raw"
store = "raw"
interval = 1.0
[[routes]]
source = "reconcile-raw"
handler = "anonymize"
target = "out"
"""

    def drop(self, i: int) -> None:
        key = f"in{i:03d}.jpg"
        self.s3.put_object(Bucket=self.raw, Key=key, Body=photo_variant(i), ContentType="image/jpeg")
        self.expected.add(key)

    def result_keys(self) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.out):
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith(".audit.json")]
        return keys

    def read_result(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.out, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def leftovers(self) -> list[str]:
        return []  # an S3 PUT is atomic: an object is whole or absent


# -- scenarios ---------------------------------------------------------------------------

def _fault(world: World, rep: Report, start: Callable[[], None], end: Callable[[], None], seconds: float,
           wait_ready: bool = True) -> float:
    """Runs a fault for ``seconds``; notes readiness flips; returns when it ended."""
    t0 = time.monotonic()
    start()
    time.sleep(seconds)
    with contextlib.suppress(Exception):
        text = httpx.get(f"http://127.0.0.1:{world.port}/metrics", timeout=5).text
        rep.metrics_during = [line for line in text.splitlines()
                              if line.startswith(("facewarden_store_", "facewarden_queue_depth"))]
    end()
    t1 = time.monotonic()
    rep.fault_s = round(t1 - t0, 1)
    if wait_ready and world.watch is not None:
        with contextlib.suppress(AssertionError):
            wait_for(lambda: world.watch.first(True, t1) is not None, 30, "ready again")
        down = world.watch.first(False, t0)
        up = world.watch.first(True, t1)
        if down is not None and down[0] <= t1:
            rep.ready_down_after_s = round(down[0] - t0, 1)
            rep.down_named = sorted({name for t, failing in world.watch.failing if t0 <= t <= t1 + 1
                                     for name in failing})
        if up is not None:
            rep.ready_up_after_s = round(up[0] - t1, 1)
    return t1


def _burst(world: World, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        world.drop(i)


def _finish(world: World, rep_name: str, ended: float, timeout: float, rep: Report | None = None) -> Report:
    world.wait_done(timeout)
    done_at = time.monotonic()
    world.settle()
    final = world.report(rep_name)
    if rep is not None:
        final.fault_s, final.ready_down_after_s = rep.fault_s, rep.ready_down_after_s
        final.ready_up_after_s, final.down_named, final.notes = rep.ready_up_after_s, rep.down_named, rep.notes
        final.metrics_during = rep.metrics_during
    if final.results >= final.inputs:
        final.done_after_recovery_s = round(done_at - ended, 1)
    return final


def service_outage(world: World, proxy: FaultProxy, mode: str, *, name: str, inputs: int = 24,
                   seconds: float = 8.0, timeout: float = 120) -> Report:
    """Drops a burst, cuts or stalls the service behind ``proxy`` once the first result is
    out (most jobs still queued), and drops a second burst while it is down."""
    rep = Report(name)
    world.start()
    world.watch.wait_ready()
    _burst(world, inputs - inputs // 4)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: world.done_count() >= 1, 60, "first result")

    def start() -> None:
        proxy.mode = mode
        rep.notes.append(f"{world.done_count()}/{len(world.expected)} done when the fault began")
        _burst(world, inputs // 4, first=inputs - inputs // 4)

    def end() -> None:
        proxy.mode = "pass"

    ended = _fault(world, rep, start, end, seconds)
    return _finish(world, name, ended, timeout, rep)


def disk_full(world: World, *, inputs: int = 8, seconds: float = 8.0, timeout: float = 120) -> Report:
    """The output folder is a full tmpfs while a burst arrives; then space is freed."""
    rep = Report("disk full then freed")
    filler = world.outgoing / ".filler"
    world.start()
    world.watch.wait_ready()

    def start() -> None:
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
        _burst(world, inputs)
        rep.notes.append("output folder full before the burst arrived")

    def end() -> None:
        filler.unlink()

    ended = _fault(world, rep, start, end, seconds)
    return _finish(world, rep.scenario, ended, timeout, rep)


def worker_sigkill(world: World, *, inputs: int = 24, timeout: float = 120) -> Report:
    rep = Report("worker SIGKILL")
    world.start()
    world.watch.wait_ready()
    _burst(world, inputs)
    wait_for(lambda: world.done_count() >= 1, 60, "first result")
    children = subprocess.run(["pgrep", "-P", str(world.daemon.proc.pid)], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    t0 = time.monotonic()
    for pid in pids[:1]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    rep.notes.append(f"killed worker pid {pids[:1]} with {world.done_count()}/{inputs} done")
    return _finish(world, rep.scenario, t0, timeout, rep)


def sigterm_mid_burst(world: World, *, inputs: int = 20, timeout: float = 150) -> Report:
    rep = Report("SIGTERM mid-burst, restart")
    world.start()
    world.watch.wait_ready()
    _burst(world, inputs)
    wait_for(lambda: world.done_count() >= 2, 60, "first results")
    t0 = time.monotonic()
    code = world.daemon.terminate(timeout=90)
    rep.notes.append(f"exit code {code} after {time.monotonic() - t0:.1f} s, "
                     f"{world.done_count()}/{inputs} done")
    world.daemon._log_fh.close()
    world.daemon = None
    world.start()
    return _finish(world, rep.scenario, time.monotonic(), timeout, rep)


def seed_legacy_quarantine(world: World, inputs: int) -> int:
    """What earlier versions left after a disk-full burst: inputs moved to quarantine with
    a final ``store.write_failed`` record, nothing in the output, nothing queued. Made
    with the real pipeline's failure path, in this process, before the daemon starts."""
    from facewarden.config.load import load_settings
    from facewarden.daemon.jobs import Event
    from facewarden.daemon.pipeline import Pipeline
    from facewarden.daemon.routing import Router
    from facewarden.errors import StoreError
    from facewarden.storage.stores import open_stores

    settings = load_settings(world.config)
    pipeline = Pipeline(settings, open_stores(settings.all_stores()))
    router = Router(settings)
    for i in range(inputs):
        key = f"in{i:03d}.jpg"
        (world.incoming / key).write_bytes(photo_variant(i))
        world.expected.add(key)
        job = router.route(Event(store="incoming", key=key, source="incoming"))
        err = StoreError("store.write_failed", f"cannot write {key!r} to outgoing: No space left on device")
        assert pipeline.quarantine_after_failure(job, err).outcome == "quarantined"
    pipeline.audit.close()
    return inputs


def legacy_quarantine(world: World, *, inputs: int = 6, timeout: float = 90) -> Report:
    """Quarantine records left by an earlier version for a write failure are re-driven
    when the daemon starts and finds the store healthy."""
    rep = Report("earlier-version quarantine re-driven")
    n = seed_legacy_quarantine(world, inputs)
    assert not any(world.incoming.glob("*.jpg")), "the seeded inputs wait in quarantine only"
    rep.notes.append(f"{n} seeded quarantine records")
    t0 = time.monotonic()
    world.start()
    return _finish(world, rep.scenario, t0, timeout, rep)


def format_report(rep: Report) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return (f"{rep.scenario:<40} {rep.inputs:>6} {rep.results:>7} {rep.lost:>4} {rep.doubled:>7} "
            f"{rep.partial:>7} {'yes' if rep.audit_ok else 'NO':>5} {f(rep.fault_s):>7} "
            f"{f(rep.done_after_recovery_s):>9} {f(rep.ready_down_after_s):>8} {f(rep.ready_up_after_s):>7}  "
            f"{','.join(rep.down_named) or '-'}  {'; '.join(rep.notes)}")


HEADER = (f"{'scenario':<40} {'inputs':>6} {'results':>7} {'lost':>4} {'doubled':>7} {'partial':>7} "
          f"{'audit':>5} {'fault_s':>7} {'done_s':>9} {'503_s':>8} {'200_s':>7}  down  notes")


def as_json(rep: Report) -> str:
    return json.dumps(rep.__dict__, default=str)
