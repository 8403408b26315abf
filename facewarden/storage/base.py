"""The Store seam, and the one rule for turning untrusted names into safe keys.

Keys are always '/'-separated, relative, and free of '..' components, whatever the
backend: a folder, an S3 bucket. Every key that comes from outside (a file name, an S3
event, a webhook body) passes through ``safe_key`` before any store sees it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from facewarden.errors import UnsafeKey

MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    #: Changes whenever the content may have changed (mtime_ns for files, ETag for S3).
    version: str


def safe_key(key: str) -> str:
    """Normalises a key or raises ``UnsafeKey``. Spaces, unicode and even newlines are
    legal names; what is refused is anything that could point outside the store."""
    if not isinstance(key, str) or not key:
        raise UnsafeKey(message="the object key is empty")
    if "\x00" in key:
        raise UnsafeKey(message="the object key contains a NUL byte")
    if "\\" in key:
        raise UnsafeKey(message="the object key contains a backslash")
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise UnsafeKey(message=f"the object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise UnsafeKey(message="the object key is an absolute path")
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        raise UnsafeKey(message="the object key contains a '.' or '..' path component")
    norm = posixpath.normpath(key)
    if norm != key.rstrip("/") or norm.startswith("../"):
        raise UnsafeKey(message="the object key is not in normal form")
    return norm


def join_key(prefix: str, key: str) -> str:
    return safe_key(f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key)


@runtime_checkable
class Store(Protocol):
    """A place holding objects by key. Writes are atomic: a reader sees the old object,
    the new one, or none, never a partial one."""

    name: str

    def get(self, key: str) -> bytes: ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def uri(self, key: str) -> str:
        """A human- and audit-friendly location, e.g. ``file:///srv/out/a.jpg``."""
        ...
