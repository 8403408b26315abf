"""The daemon's lifecycle, driven as a user and systemd drive it: real `facewarden run` and
`facewarden worker` processes, real signals, real ports.

Each test here is a reproduction from issue 9 that failed on 1dfbb45: a taken HTTP port or
a typo in a folder source hung the daemon, SIGTERM could deadlock it, a normal stop
replaced a worker, /readyz said 200 before any model was loaded, GET /jobs/{id} needed
the DMS source.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.daemon_harness import MODELS, wait_for

EX_CONFIG, EX_UNAVAILABLE = 78, 69


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tmp: Path, *, workers: int = 0, http_port: int | None = None, models: Path = MODELS,
           source_extra: str = "", extra: str = "") -> Path:
    for d in ("in", "out", "state"):
        (tmp / d).mkdir(exist_ok=True)
    http = f'[http]\nenabled = true\nport = {http_port}\njob_status_secret = "s3cret-s3cret-s3cret"\n' \
        if http_port is not None else ""
    path = tmp / "fw.toml"
    path.write_text(f"""
state_dir = "{tmp / 'state'}"
models_dir = "{models}"
{extra}
[workers]
count = {workers}

[stores.incoming]
type = "local"
root = "{tmp / 'in'}"

[stores.outgoing]
type = "local"
root = "{tmp / 'out'}"

[[sources]]
type = "folder"
name = "incoming"
store = "incoming"
stability_delay = 0.2
{source_extra}

[[routes]]
source = "incoming"
target = "outgoing"

{http}
[log]
format = "json"
""")
    return path


class Proc:
    """`facewarden CMD --config ...` in its own process group; stderr kept apart."""

    def __init__(self, tmp: Path, *args: str):
        self.err_path = tmp / f"stderr-{time.monotonic_ns()}.log"
        self._err = open(self.err_path, "wb")  # noqa: SIM115 - held for the child's lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "facewarden", *args],
                                     stdout=subprocess.DEVNULL, stderr=self._err,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     start_new_session=True)
        self.started = time.monotonic()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        out = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def count(self, event: str) -> int:
        return sum(e.get("event") == event for e in self.events())

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout:.0f} s:\n{self.stderr[-3000:]}") from None

    def group_gone(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None or not self.group_gone():
            self.kill()
        self._err.close()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error [")]


# -- start-up is all-or-nothing --------------------------------------------------------------


def test_taken_http_port_exits_69_within_10s_with_one_line_and_nothing_left_running(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        p = Proc(tmp_path, "run", "--config", str(config(tmp_path, workers=1, http_port=port)))
        try:
            assert p.wait(10) == EX_UNAVAILABLE
            assert p.group_gone(), "a worker process outlived the daemon"
        finally:
            p.close()
    (line,) = error_lines(p.stderr)
    assert line.startswith("error [http.port_in_use]") and str(port) in line
    assert "Traceback" not in p.stderr
    assert p.count("worker.started") == 0, "the pool must not start before the port is bound"


def test_typo_in_a_folder_source_exits_78_naming_the_key(tmp_path):
    cfg = config(tmp_path, workers=1, source_extra="poll_intervall = 2")
    p = Proc(tmp_path, "run", "--config", str(cfg))
    try:
        assert p.wait(10) == EX_CONFIG
    finally:
        p.close()
    (line,) = error_lines(p.stderr)
    assert "error [config.invalid]" in line and "poll_intervall" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "AttributeError" not in p.stderr
    assert p.count("worker.started") == 0


def test_missing_models_exit_78_up_front_without_starting_workers(tmp_path):
    cfg = config(tmp_path, workers=2, models=tmp_path / "no-models")
    p = Proc(tmp_path, "run", "--config", str(cfg))
    try:
        assert p.wait(10) == EX_CONFIG
    finally:
        p.close()
    (line,) = error_lines(p.stderr)
    assert line.startswith("error [model.missing]") and "facewarden models install" in line
    assert p.count("worker.started") == 0


def test_unreachable_broker_exits_69_after_its_retry_budget(tmp_path):
    dead = free_port()  # nothing listens here
    extra = f'[queue]\nbackend = "rabbitmq"\n[queue.rabbitmq]\nurl = "amqp://guest:guest@127.0.0.1:{dead}/%2F"\n' \
            "publish_timeout = 2\n"
    for cmd in ("run", "worker"):
        p = Proc(tmp_path, cmd, "--config", str(config(tmp_path, workers=1, extra=extra)))
        try:
            assert p.wait(12) == EX_UNAVAILABLE, cmd
            assert p.group_gone()
        finally:
            p.close()
        (line,) = error_lines(p.stderr)
        assert line.startswith("error [queue.unavailable]") and "guest:guest" not in line
        assert p.count("worker.started") == 0


def test_worker_host_with_missing_models_exits_78_up_front(tmp_path):
    extra = f'[queue]\nbackend = "rabbitmq"\n[queue.rabbitmq]\nurl = "amqp://guest:guest@127.0.0.1:{free_port()}/%2F"\n'
    cfg = config(tmp_path, workers=2, models=tmp_path / "no-models", extra=extra)
    p = Proc(tmp_path, "worker", "--config", str(cfg))
    try:
        assert p.wait(10) == EX_CONFIG
    finally:
        p.close()
    (line,) = error_lines(p.stderr)
    assert line.startswith("error [model.missing]")
    assert p.count("worker.started") == 0


def test_worker_host_refuses_the_embedded_queue_with_78(tmp_path):
    p = Proc(tmp_path, "worker", "--config", str(config(tmp_path, workers=1)))
    try:
        assert p.wait(10) == EX_CONFIG
    finally:
        p.close()
    (line,) = error_lines(p.stderr)
    assert "queue.backend" in line


# -- signals ---------------------------------------------------------------------------------


def test_a_thousand_signals_inside_each_other_only_set_the_flag():
    """In-process: the handler must be re-entrant (Event.set() in a handler deadlocked)."""
    from facewarden.daemon.supervise import StopRequest

    stop = StopRequest()
    assert stop.install()
    try:
        for _ in range(1000):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5) is True
        assert stop.signum == signal.SIGTERM
        assert stop.wait(0) is True  # stays requested; waiting never blocks again
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _storm(p: Proc, how: str) -> None:
    pid = p.proc.pid
    if how == "twice":
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)
    elif how == "group":
        os.killpg(pid, signal.SIGTERM)
    elif how == "group-twice":
        os.killpg(pid, signal.SIGTERM)
        os.killpg(pid, signal.SIGTERM)
    elif how == "mixed":
        os.killpg(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        os.killpg(pid, signal.SIGTERM)
    elif how == "burst":
        for _ in range(25):
            os.killpg(pid, random.choice((signal.SIGTERM, signal.SIGINT)))


@pytest.mark.slow
def test_sigterm_twice_and_to_the_group_a_hundred_times_never_hangs(tmp_path):
    """100 signal volleys over 25 start/stop cycles at random moments of start-up and of
    running (workers starting, loading models, idle). Every cycle must end within 20 s,
    with every process of the group gone, and no worker ever taken for a crash."""
    rng = random.Random(9)
    hows = ["twice", "group", "group-twice", "mixed", "burst"]
    volleys = 0
    for cycle in range(25):
        d = tmp_path / f"c{cycle}"
        d.mkdir()
        p = Proc(d, "run", "--config", str(config(d, workers=1 if cycle % 3 == 0 else 0)))
        try:
            time.sleep(rng.uniform(0.0, 2.5))
            for _ in range(4):
                if p.proc.poll() is not None:
                    break
                _storm(p, rng.choice(hows))  # back to back: "however fast"
                volleys += 1
            code = p.wait(20)
            wait_for(p.group_gone, 10, "every worker process to exit")
        finally:
            p.close()
        # Before our handlers exist (interpreter start-up) a signal's default action applies.
        assert code in (0, -signal.SIGTERM, -signal.SIGINT), (cycle, code, p.stderr[-2000:])
        assert p.count("worker.died") == 0, p.stderr[-2000:]
        if code == 0 and p.count("daemon.started"):
            assert p.count("daemon.stopped") == 1
    assert volleys >= 90


@pytest.mark.slow
def test_normal_stop_replaces_no_worker_and_takes_seconds_not_minutes(tmp_path):
    port = free_port()
    p = Proc(tmp_path, "run", "--config", str(config(tmp_path, workers=2, http_port=port)))
    try:
        wait_for(lambda: p.count("worker.ready") >= 2, 120, "two workers ready")
        sent = time.monotonic()
        os.killpg(p.proc.pid, signal.SIGTERM)  # as systemd and Ctrl-C do: the whole group
        assert p.wait(30) == 0
        took = time.monotonic() - sent
        wait_for(p.group_gone, 10, "every worker process to exit")
    finally:
        p.close()
    assert p.count("worker.died") == 0, p.stderr[-3000:]
    assert p.count("worker.started") == 2, "a worker stopping with the daemon was replaced"
    assert p.count("worker.stopped") == 2
    assert took < 6, f"stopping an idle daemon took {took:.1f} s"


# -- readiness -------------------------------------------------------------------------------


@pytest.mark.slow
def test_readyz_is_503_naming_the_workers_until_every_worker_has_loaded_its_models(tmp_path):
    port = free_port()
    p = Proc(tmp_path, "run", "--config", str(config(tmp_path, workers=2, http_port=port)))
    seen_503 = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, p.stderr[-3000:]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if r.status_code == 200:
                # The worker logs worker.ready before it tells the supervisor.
                assert p.count("worker.ready") == 2, "ready before every worker loaded its models"
                assert r.json()["not_ready"] == {}
                break
            assert r.status_code == 503
            seen_503.append(r.json())
            time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        os.killpg(p.proc.pid, signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        p.close()
    assert seen_503, "the daemon was never seen not ready"
    assert any("workers" in body["not_ready"] and "loaded their models" in body["not_ready"]["workers"]
               for body in seen_503)


# -- job status is a daemon feature ------------------------------------------------------------


def test_job_status_is_served_without_any_dms_source(tmp_path):
    from facewarden.config import load_settings
    from facewarden.daemon.app import Daemon
    from facewarden.daemon.jobs import Event
    from facewarden.daemon.signing import sign

    secret = b"s3cret-s3cret-s3cret"
    settings = load_settings(config(tmp_path, http_port=0))
    daemon = Daemon(settings, workers=0)
    daemon.start()
    try:
        (tmp_path / "in" / "a.jpg").write_bytes(b"not yet looked at")
        job_id = daemon.emit(Event(store="incoming", key="a.jpg", source="incoming"))
        assert job_id
        path = f"/jobs/{job_id}"
        ts = str(int(time.time()))
        signed = {"X-Facewarden-Timestamp": ts,
                  "X-Facewarden-Signature": sign(secret, ts, f"GET {path}".encode())}
        got = httpx.get(daemon.http.url + path, headers=signed)
        assert got.status_code == 200, got.text
        assert got.json() == {"id": job_id, "state": "queued"}
        assert httpx.get(daemon.http.url + path).status_code == 401
        wrong = {**signed, "X-Facewarden-Signature": sign(b"another-key-another", ts, f"GET {path}".encode())}
        assert httpx.get(daemon.http.url + path, headers=wrong).status_code == 401
        other = f"/jobs/{'0' * 32}"
        assert httpx.get(daemon.http.url + other, headers=signed).status_code == 401  # bound to the path
    finally:
        daemon.stop()


def test_job_status_without_a_key_is_refused_not_open(tmp_path):
    from facewarden.daemon.http import build_app, serve_in_thread

    class Jobs:
        def status(self, job_id):
            return {"id": job_id, "state": "queued"}

    handle = serve_in_thread(build_app(services={"jobs": Jobs()}), "127.0.0.1", 0)
    try:
        r = httpx.get(f"{handle.url}/jobs/{'a' * 32}")
        assert r.status_code == 403 and "http.job_status_secret" in r.json()["message"]
    finally:
        handle.stop()


# -- the readiness registry ------------------------------------------------------------------


def test_health_watch_asks_the_probe_on_every_snapshot_and_names_what_is_not_ready():
    from facewarden.daemon.health import Health

    health = Health()
    assert health.ready()[0] is False  # nothing reported yet: not ready
    up = {"value": False}
    health.watch("source:in", lambda: up["value"], "not watching yet")
    health.set("workers", True)
    assert health.not_ready() == {"source:in": "not watching yet"}
    up["value"] = True
    assert health.ready()[0] is True and health.not_ready() == {}

    def broken() -> bool:
        raise OSError("gone")

    health.watch("source:s3", broken, "not connected")
    assert health.not_ready() == {"source:s3": "not connected (OSError)"}
    health.forget("source:s3")
    assert health.ready()[0] is True


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_worker_host_runs_the_same_loop_ready_then_a_group_sigterm_stops_it_cleanly(tmp_path):
    import fixtures_rabbit

    url = fixtures_rabbit.ensure_broker()
    cfg = fixtures_rabbit.unique_cfg(url)
    port = free_port()
    extra = (f'[queue]\nbackend = "rabbitmq"\n[queue.rabbitmq]\nurl = "{url}"\nqueue = "{cfg.queue}"\n'
             f'exchange = "{cfg.exchange}"\ndead_letter_exchange = "{cfg.dead_letter_exchange}"\n')
    p = Proc(tmp_path, "worker", "--config", str(config(tmp_path, http_port=port, extra=extra)),
             "--concurrency", "2")
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 120, "the worker host to be ready")
        assert p.count("worker.ready") == 2
        os.killpg(p.proc.pid, signal.SIGTERM)
        os.killpg(p.proc.pid, signal.SIGTERM)
        assert p.wait(30) == 0
        wait_for(p.group_gone, 10, "every worker process to exit")
    finally:
        p.close()
        fixtures_rabbit.delete_topology(url, cfg)
    assert p.count("worker.died") == 0 and p.count("worker.started") == 2, p.stderr[-3000:]
    assert p.count("worker_host.stopped") == 1


@pytest.mark.slow
def test_group_sigterm_twice_mid_job_finishes_the_job_in_hand_once(tmp_path, face_photo):
    from tests.daemon_harness import audit_rows

    p = Proc(tmp_path, "run", "--config", str(config(tmp_path, workers=1)))
    try:
        wait_for(lambda: p.count("worker.ready") >= 1, 120, "the worker ready")
        (tmp_path / "in" / "drain.jpg").write_bytes(face_photo.read_bytes())
        wait_for(lambda: p.count("job.queued") >= 1, 30, "the job queued")
        time.sleep(0.3)  # leased, inside the model
        os.killpg(p.proc.pid, signal.SIGTERM)
        os.killpg(p.proc.pid, signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        p.close()
    rows = audit_rows(tmp_path / "state")
    assert [r["outcome"] for r in rows] == ["ok"], rows
    assert (tmp_path / "out" / "drain.jpg").exists()
    assert p.count("worker.died") == 0


def test_exit_codes_follow_the_documented_table():
    from pydantic import BaseModel, ValidationError

    from facewarden import exitcodes
    from facewarden.daemon.supervise import error_line, exit_code_for
    from facewarden.errors import ConfigError, FacewardenError, ModelError, StoreError

    class M(BaseModel):
        n: int

    try:
        M(n="x")
    except ValidationError as exc:
        invalid = exc
    assert exit_code_for(ConfigError("config.invalid", "x")) == exitcodes.EX_CONFIG == 78
    assert exit_code_for(ModelError("model.missing", "x")) == 78
    assert exit_code_for(invalid) == 78
    assert exit_code_for(StoreError("store.error", "down")) == exitcodes.EX_UNAVAILABLE == 69
    assert exit_code_for(FacewardenError("config.no_sources", "x")) == exitcodes.EX_FAILED == 1
    assert exit_code_for(RuntimeError("bug")) == exitcodes.EX_SOFTWARE == 70
    assert error_line(StoreError("store.error", "the bucket is away")) == "error [store.error]: the bucket is away"
