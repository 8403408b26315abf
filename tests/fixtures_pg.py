"""PostgreSQL fixtures: the real server on 127.0.0.1:5432 (user postgres; started when it is
down), a fresh gallery database and key database per test, dropped afterwards.

Import into a test module with ``from fixtures_pg import pg_gallery_urls  # noqa: F401``.
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

HOST = "127.0.0.1"
PORT = 5432
ADMIN_URL = f"postgresql://postgres@{HOST}:{PORT}/postgres"


def _port_open() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, PORT)) == 0


def ensure_server() -> None:
    """Starts the machine's cluster when nothing listens on 5432 (as .ci/run does)."""
    if _port_open():
        return
    versions = [os.path.basename(p) for p in glob.glob("/etc/postgresql/*")]
    for version in versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _port_open():
        if time.monotonic() > deadline:
            pytest.fail("PostgreSQL is not listening on 127.0.0.1:5432")
        time.sleep(0.3)


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


@dataclass(frozen=True)
class PgGallery:
    """A test's own databases: ``url`` (the gallery) and ``keys_url`` (its data keys)."""

    name: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{PORT}/{self.name}"

    @property
    def keys_url(self) -> str:
        return f"{self.url}_keys"


def create_databases(*names: str) -> None:
    for name in names:
        admin(f'CREATE DATABASE "{name}"')


def drop_databases(*names: str) -> None:
    for name in names:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_gallery_urls() -> Iterator[PgGallery]:
    ensure_server()
    db = PgGallery(f"fwtest_{uuid.uuid4().hex[:12]}")
    create_databases(db.name, f"{db.name}_keys")
    try:
        yield db
    finally:
        drop_databases(db.name, f"{db.name}_keys")


def wait_until(cond: Callable[[], bool], timeout: float) -> float:
    """Fails when a check *started* after ``timeout`` s is still false (a slow call that
    began inside the bound and answered from before it is no failure)."""
    t0 = time.monotonic()
    while True:
        started = time.monotonic() - t0
        if cond():
            return started
        if started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.002)
