"""The HTTP app over a real socket (uvicorn in a thread): probes, metrics (also summed over
processes), source routes, and the sd_notify sender."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from facewarden.daemon import metrics
from facewarden.daemon.http import build_app, serve_in_thread
from facewarden.daemon.sdnotify import notify
from facewarden.errors import ConfigError, FacewardenError


class HookSource:
    name = "hooks"

    def routes(self):
        async def hello(_request):
            return PlainTextResponse("hi")

        return [Route("/webhooks/hello", hello, methods=["POST"])]


class FakeQueue:
    def __init__(self, depth: int):
        self._depth = depth

    def depth(self) -> int:
        return self._depth

    def dead_letter_depth(self) -> int:
        raise ConnectionError("broker away")  # a broken gauge must not break the scrape


@pytest.fixture
def server():
    state = {"queue": True}
    app = build_app(
        sources=[HookSource(), object()],
        services={"queue": FakeQueue(7)},
        ready={"queue": lambda: state["queue"], "models": lambda: True},
    )
    handle = serve_in_thread(app, "127.0.0.1", 0)
    yield handle, state
    handle.stop()


def test_probes_metrics_and_source_routes(server):
    handle, state = server
    base = handle.url
    assert httpx.get(f"{base}/healthz").status_code == 200
    r = httpx.get(f"{base}/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"queue": True, "models": True}
    state["queue"] = False
    r = httpx.get(f"{base}/readyz")
    assert r.status_code == 503 and r.json()["checks"]["queue"] is False
    # Liveness does not depend on the broker.
    assert httpx.get(f"{base}/healthz").status_code == 200

    metrics.JOBS.labels(handler="anonymize", outcome="ok").inc()
    metrics.observe_outcome("anonymize", "quarantined", seconds=0.2, event_at=1.0)
    text = httpx.get(f"{base}/metrics").text
    assert 'facewarden_jobs_total{handler="anonymize",outcome="ok"}' in text
    assert 'facewarden_jobs_total{handler="anonymize",outcome="quarantined"}' in text
    assert "facewarden_job_seconds_bucket" in text
    assert "facewarden_queue_depth 7.0" in text
    assert "facewarden_dead_letter_depth" not in text

    assert httpx.post(f"{base}/webhooks/hello").text == "hi"
    assert httpx.get(f"{base}/nope").status_code == 404


def test_route_clash_is_a_config_error_and_a_taken_port_a_retryable_one():
    class Clash(HookSource):
        def routes(self):
            return [Route("/metrics", lambda r: None)]

    with pytest.raises(ConfigError, match="already taken"):
        build_app(sources=[Clash()])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # Another process holds the port: worth a restart later (exit 69), not a config error.
        with pytest.raises(FacewardenError, match="already in use") as taken:
            serve_in_thread(build_app(), "127.0.0.1", port)
        assert taken.value.code == "http.port_in_use" and taken.value.retryable
        assert not isinstance(taken.value, ConfigError)


def test_metrics_from_worker_processes_are_summed(tmp_path: Path):
    # Runs in a fresh interpreter: multiprocess mode is process-global state.
    script = textwrap.dedent(
        f"""
        import multiprocessing as mp
        from facewarden.daemon import metrics

        def work(n):
            from facewarden.daemon import metrics
            for _ in range(n):
                metrics.JOBS.labels(handler="anonymize", outcome="ok").inc()
            metrics.RETRIES.labels(reason="processing.failed").inc()

        if __name__ == "__main__":
            metrics.configure({str(tmp_path)!r}, fresh=True)
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=work, args=(n,)) for n in (2, 3)]
            for p in procs: p.start()
            for p in procs: p.join()
            body, _ = metrics.render()
            print(body.decode())
        """
    )
    path = tmp_path / "mp_metrics.py"
    path.write_text(script)
    out = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert 'facewarden_jobs_total{handler="anonymize",outcome="ok"} 5.0' in out
    assert 'facewarden_retries_total{reason="processing.failed"} 2.0' in out


def test_sd_notify_sends_datagrams(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False  # not under systemd: a no-op
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1") is True
        assert notify("WATCHDOG=1") is True
        assert sock.recv(100) == b"READY=1"
        assert sock.recv(100) == b"WATCHDOG=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify("READY=1") is False  # never raises
