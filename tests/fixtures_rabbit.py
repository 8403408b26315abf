"""RabbitMQ fixtures: a real broker on 127.0.0.1:5672 (started when it is down), unique
queue/exchange names per test, deleted afterwards; and, for the broker-restart test, a
private second node on its own port so stopping it cannot disturb anybody else's tests.

Import the fixtures into a test module with
``from fixtures_rabbit import rabbit_cfg, rabbit_url  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from facewarden.config.schema import RabbitMQConfig

HOST = "127.0.0.1"
PORT = 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/%2F"


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, up: bool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port) == up:
            return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} did not come {'up' if up else 'down'} within {timeout} s")


def ensure_broker() -> str:
    """The shared broker; starts it (detached) when nothing listens on 5672."""
    if not port_open(PORT):
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(PORT, True)
    # The port opens slightly before AMQP logins work: wait for a real connection.
    deadline = time.monotonic() + 60
    while True:
        try:
            pika.BlockingConnection(pika.URLParameters(URL)).close()
            return URL
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    return ensure_broker()


def delete_topology(url: str, cfg: RabbitMQConfig, extra_queues: tuple[str, ...] = ()) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        queues = [
            cfg.queue,
            cfg.dead_letter_queue or f"{cfg.queue}.dead",
            *extra_queues,
            *(f"{cfg.queue}.delay.{s * 1000}" for s in range(0, 11)),
        ]
        for q in queues:
            ch.queue_delete(q)
        for ex in (cfg.exchange, cfg.dead_letter_exchange, cfg.results_exchange):
            ch.exchange_delete(ex)
    finally:
        conn.close()


def unique_cfg(url: str, **overrides: object) -> RabbitMQConfig:
    tag = uuid.uuid4().hex[:10]
    base = dict(
        url=url,
        queue=f"fwtest.{tag}.jobs",
        exchange=f"fwtest.{tag}",
        dead_letter_exchange=f"fwtest.{tag}.dlx",
        results_exchange=f"fwtest.{tag}.results",
        heartbeat=10,
        publish_timeout=30.0,
        reconnect_max_delay=1.0,
    )
    base.update(overrides)
    return RabbitMQConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def rabbit_cfg(rabbit_url: str) -> Iterator[RabbitMQConfig]:
    cfg = unique_cfg(rabbit_url, delivery_limit=2)
    yield cfg
    delete_topology(rabbit_url, cfg)


def get_raw(url: str, queue: str, timeout: float = 10.0):
    """basic_get with polling; returns (properties, body) or None. Acks what it reads."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is not None:
                return props, body
            time.sleep(0.1)
        return None
    finally:
        conn.close()


@dataclass
class PrivateNode:
    """A throw-away RabbitMQ node on its own ports, for tests that stop the broker."""

    name: str
    port: int
    base: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/%2F"

    def ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env(),
        )

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ALLOW_INPUT": "false",
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture
def private_node() -> Iterator[PrivateNode]:
    """Starts its own node (≈5-10 s) so that stop_app/start_app hurt nobody else."""
    base = Path(tempfile.mkdtemp(prefix="fw-rabbit-"))
    port = _free_port()
    while port + 20000 > 65535:
        port = _free_port()
    node = PrivateNode(name=f"fwtest{port}@localhost", port=port, base=base)
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = {HOST}:{port}\n")
    for sub in ("mnesia", "log"):
        (base / sub).mkdir()
    if os.geteuid() == 0:
        # rabbitmq-server drops root for the `rabbitmq` user, which must own the node's files.
        for p in (base, *base.rglob("*")):
            with contextlib.suppress(KeyError, LookupError, PermissionError):
                shutil.chown(p, "rabbitmq", "rabbitmq")
    subprocess.run(
        ["rabbitmq-server", "-detached"],
        env=node.env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        subprocess.run(
            ["rabbitmqctl", "-n", node.name, "wait", str(base / "node.pid"), "--timeout", "90"],
            env=node.env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_port(port, True)
        yield node
    finally:
        subprocess.run(
            ["rabbitmqctl", "-n", node.name, "stop"],
            env=node.env(),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(base, ignore_errors=True)
