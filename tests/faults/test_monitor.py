"""The service monitor turns Health (hence /readyz) down and up again, naming the part
(how fast is measured by bench/faults.py; here only that it happens, within 15 s):
real RabbitMQ and moto S3 behind the fault proxy, the monitor's own threads and timeouts."""
# ruff: noqa: F811  (pytest fixtures imported from fixture modules are re-bound as arguments)

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from fixtures_rabbit import rabbit_url  # noqa: F401
from fixtures_s3 import make_store, moto_server, s3_client, s3_env  # noqa: F401

from facewarden.daemon.health import Health
from facewarden.daemon.monitor import ServiceMonitor, amqp_probe, store_probe


def _flip_time(health: Health, component: str, ok: bool, limit: float = 15.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        state = health.snapshot().get(component)
        if state is not None and state.ok is ok:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{component} did not turn {'up' if ok else 'down'} within {limit} s")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_broker_down_and_back(rabbit_url: str, proxy_to, mode: str) -> None:
    proxy = proxy_to("127.0.0.1", 5672)
    health = Health()
    recovered: list[str] = []
    monitor = ServiceMonitor(health, {"queue": amqp_probe(f"amqp://guest:guest@{proxy.address}/%2F")},
                             on_recover=recovered.append).start()
    try:
        _flip_time(health, "queue", True)
        proxy.mode = mode
        _flip_time(health, "queue", False)
        assert health.snapshot()["queue"].reason
        proxy.mode = "pass"
        _flip_time(health, "queue", True)
        assert recovered == ["queue", "queue"], "called at the first 'up' and after the outage"
    finally:
        monitor.stop()


@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_s3_store_down_and_back(s3_env: str, s3_client, proxy_to, mode: str) -> None:
    s3_client.create_bucket(Bucket="probe-me")
    u = urlsplit(s3_env)
    proxy = proxy_to(u.hostname, u.port)
    store = make_store(f"http://{proxy.address}", "out", "probe-me")
    health = Health()
    monitor = ServiceMonitor(health, {"store:out": store_probe(store)}).start()
    try:
        _flip_time(health, "store:out", True)
        proxy.mode = mode
        _flip_time(health, "store:out", False)
        proxy.mode = "pass"
        _flip_time(health, "store:out", True)
        ready, states = health.ready()
        assert ready and states["store:out"].ok
    finally:
        monitor.stop()
