"""The Store seam, and the one rule for turning untrusted names into safe keys.

Keys are always '/'-separated, relative, and free of '..' components, whatever the
backend: a folder, an S3 bucket. Every key that comes from outside (a file name, an S3
event, a webhook body) passes through ``safe_key`` before any store sees it.
"""

from __future__ import annotations

import abc
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from facewarden.errors import UnsafeKey
from facewarden.registry import Registry

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


class Store(abc.ABC):
    """A place holding objects by key. Writes are atomic: a reader sees the old object,
    the new one, or none, never a partial one.

    Every capability the daemon uses is declared here; the optional ones have a default
    that works on any backend (dramatiq-style), and a backend overrides them only to do
    better (a rename instead of copy+delete). Callers never probe with getattr/isinstance.
    """

    name: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raises ``FileNotFoundError`` (or a subclass) when absent."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object; a missing one is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """A human- and audit-friendly location, e.g. ``file:///srv/out/a.jpg``."""

    # -- capabilities with defaults ----------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def read_if_exists(self, key: str) -> bytes | None:
        """The bytes, or None when the object is absent."""
        try:
            return self.get(key)
        except FileNotFoundError:
            return None

    def move_to(self, key: str, dest: Store, dest_key: str) -> None:
        """Moves an object, within this store or to another one. The default copies then
        deletes (a crash in between leaves both, never neither); backends that can rename
        in one step override it."""
        dest.put(dest_key, self.get(key))
        self.delete(key)

    def same_location(self, key: str, other: Store, other_key: str) -> bool:
        """True when (self, key) and (other, other_key) name the same object, e.g. two
        local stores whose roots overlap. The default compares URIs."""
        return self.uri(key) == other.uri(other_key)


#: Store backends by config ``type``; each backend file registers itself.
#: A factory takes (name, store config) and returns a Store.
STORES: Registry[Callable[[str, Any], Store]] = Registry("store", "facewarden.storage", ("local", "s3"))
