"""Fixtures for the fault-injection suite: a small tmpfs (disk full), a fault proxy."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.proxy import FaultProxy


def mount_tmpfs(path: Path, size: str = "3m") -> None:
    """A tiny RAM disk; needs root (CI and the project's machines run tests as root)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        msg = f"cannot mount a tmpfs at {path} ({proc.stderr.strip()}): disk-full tests need root"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "small"
    mount_tmpfs(path)
    try:
        yield path
    finally:
        umount(path)


@pytest.fixture
def proxy_to() -> Iterator:
    made: list[FaultProxy] = []

    def make(host: str, port: int) -> FaultProxy:
        p = FaultProxy(host, port)
        made.append(p)
        return p

    yield make
    for p in made:
        with contextlib.suppress(Exception):
            p.close()
