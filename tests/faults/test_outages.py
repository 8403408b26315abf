"""Outages delay work, they never lose it: real daemon processes, real faults.

RabbitMQ and S3 (moto's HTTP server) sit behind a TCP proxy that refuses or stalls on
demand; disk full is a 3 MB tmpfs. Each scenario asserts: every input ends with exactly
one result and one ok audit record, no partial object, ``facewarden audit verify``
passes, and /readyz named the failing service while it was down. Timings are printed by
bench/faults.py, never asserted here. Marked ``faults``: ``pytest -m "not faults"`` skips
them for a quick local run; CI runs everything.
"""
# ruff: noqa: F811  (pytest fixtures imported from fixture modules are re-bound as arguments)

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fixtures_rabbit import rabbit_url  # noqa: F401
from fixtures_s3 import moto_server, s3_env  # noqa: F401

from faults import scenarios
from faults.conftest import mount_tmpfs, umount

S3_STORES = ("store:raw", "store:out")  # both buckets sit behind the same proxy
pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(400)]


def check(rep: scenarios.Report, *, down: str | tuple[str, ...] | None = None) -> None:
    print(scenarios.HEADER)
    print(scenarios.format_report(rep))
    assert rep.inputs > 0
    assert rep.lost == 0, rep
    assert rep.doubled == 0, rep
    assert rep.partial == 0, rep
    assert rep.results == rep.inputs, rep
    assert rep.audit_ok, rep.audit_problems
    if down is not None:
        assert rep.ready_down_after_s is not None, f"/readyz never turned 503: {rep}"
        names = (down,) if isinstance(down, str) else down
        assert set(names) & set(rep.down_named), f"/readyz did not name {down}: {rep.down_named}"
        assert rep.ready_up_after_s is not None, f"/readyz never turned 200 again: {rep}"


@pytest.fixture
def broker_world(tmp_path: Path, rabbit_url: str, proxy_to):
    proxy = proxy_to("127.0.0.1", 5672)
    world = scenarios.World(tmp_path, queue="rabbitmq", broker_proxy=proxy, workers=1)
    yield world, proxy
    world.close()


@pytest.fixture
def s3_world(tmp_path: Path, s3_env: str, proxy_to):
    u = urlsplit(s3_env)
    proxy = proxy_to(u.hostname, u.port)

    def make(**kw):
        world = scenarios.S3World(tmp_path, moto=s3_env, s3_proxy=proxy, **{"workers": 1, **kw})
        made.append(world)
        return world

    made: list[scenarios.World] = []
    yield make, proxy
    for w in made:
        w.close()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_broker_outage(broker_world, mode: str) -> None:
    world, proxy = broker_world
    check(scenarios.service_outage(world, proxy, mode, name=f"broker {mode}"), down="queue")


@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_s3_outage_short(s3_world, mode: str) -> None:
    make, proxy = s3_world
    check(scenarios.service_outage(make(), proxy, mode, name=f"S3 {mode} (short)"), down=S3_STORES)


def test_s3_stall_longer_than_the_retry_budget(s3_world) -> None:
    make, proxy = s3_world
    world = make(retry_budget=3.0)
    check(scenarios.service_outage(world, proxy, "stall", name="S3 stall > retry budget", seconds=12),
          down=S3_STORES)


def test_disk_full_then_freed(tmp_path: Path) -> None:
    out = tmp_path / "small"
    mount_tmpfs(out)
    world = scenarios.World(tmp_path, out_dir=out, retry_budget=4.0)
    try:
        rep = scenarios.disk_full(world)
        check(rep, down="store:outgoing")
        assert 'facewarden_store_up{store="outgoing"} 0.0' in rep.metrics_during, rep.metrics_during
        breaker = [float(line.split()[-1]) for line in rep.metrics_during
                   if line.startswith('facewarden_store_breaker_state{store="outgoing"}')]
        assert breaker and breaker[0] >= 1.0, rep.metrics_during  # open (1) or half-open (2)
    finally:
        world.close()
        umount(out)


def test_worker_sigkill(tmp_path: Path) -> None:
    world = scenarios.World(tmp_path)
    try:
        check(scenarios.worker_sigkill(world))
    finally:
        world.close()


def test_sigterm_mid_burst(tmp_path: Path) -> None:
    world = scenarios.World(tmp_path)
    try:
        check(scenarios.sigterm_mid_burst(world))
    finally:
        world.close()


def test_earlier_version_quarantine_is_redriven_at_start(tmp_path: Path) -> None:
    world = scenarios.World(tmp_path, originals="delete")
    try:
        rep = scenarios.legacy_quarantine(world)
        check(rep)
        rows = scenarios.audit_rows(world.state)
        assert sum(r.get("kind") == "redrive" for r in rows) == rep.inputs
        assert not list((world.state / "quarantine").rglob("*.jpg")), "re-driven inputs leave quarantine"
    finally:
        world.close()
