"""A folder as a store. Writes are atomic (temp file in the same directory, fsync, rename,
fsync of the directory), so a reader or a crash never leaves a partial result visible."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from facewarden.errors import StoreError, StoreRefused, StoreUnavailable, UnsafeKey
from facewarden.storage.base import STORES, ObjectInfo, Store, safe_key

#: Temp files start with a dot so that folder sources (which ignore dot files) never see them.
TMP_PREFIX = ".fw-tmp-"
#: Below this many free bytes a probe reports the folder as full (a write would fail).
PROBE_MIN_FREE = 256 * 1024

#: errnos of an outage: the disk, the mount or the network share will come back.
RETRYABLE_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOSPC", "EDQUOT", "EIO", "EROFS", "EAGAIN", "EBUSY", "EINTR", "ENOMEM", "ETIMEDOUT",
    "ENOTCONN", "ESTALE", "EHOSTDOWN", "EHOSTUNREACH", "ENETDOWN", "ENETUNREACH",
    "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ENOLCK", "EREMOTEIO", "ENOMEDIUM",
) if hasattr(errno, n))
_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def store_error(store: str, op: str, key: str, exc: OSError) -> StoreError:
    """An OSError as a StoreError that says truthfully whether waiting can help."""
    what = f"cannot {op} {key!r} in {store}: {exc.strerror or exc}"
    if exc.errno in _FULL:
        return StoreUnavailable("store.full", what + " (no space left)", store=store)
    if exc.errno in RETRYABLE_ERRNOS:
        return StoreUnavailable("store.unavailable", what, store=store)
    return StoreRefused("store.refused", what, store=store)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    def __init__(self, name: str, root: Path | str, *, fsync: bool = True):
        self.name = name
        self.root = Path(root).absolute()
        self.fsync = fsync

    def path_of(self, key: str) -> Path:
        """The file for a key; refuses keys that resolve outside the root (symlinks too)."""
        path = self.root / safe_key(key)
        real_root = self.root.resolve()
        if not path.parent.resolve().is_relative_to(real_root):
            raise UnsafeKey(message="the object key resolves outside its store (symlink)")
        if path.is_symlink() and not path.resolve().is_relative_to(real_root):
            raise UnsafeKey(message="the object is a symlink pointing outside its store")
        return path

    def key_of(self, path: Path) -> str:
        return safe_key(Path(path).absolute().relative_to(self.root).as_posix())

    def get(self, key: str) -> bytes:
        try:
            return self.path_of(key).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise store_error(self.name, "read", key, exc) from exc

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.path_of(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise store_error(self.name, "stat", key, exc) from exc
        return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")

    def probe(self) -> None:
        """A light check that the folder is there, readable and not full (for readiness
        and the circuit breaker's half-open test); raises a StoreError when it is not."""
        here = self.root  # not created yet (it is on the first write): check where it will be
        while not here.exists() and here.parent != here:
            here = here.parent
        try:
            st = os.statvfs(here)
            with os.scandir(here) as it:
                next(it, None)
        except OSError as exc:
            raise store_error(self.name, "probe", ".", exc) from exc
        if st.f_bavail * st.f_frsize < PROBE_MIN_FREE:
            raise StoreUnavailable("store.full", f"{self.name} ({self.root}) has less than "
                                   f"{PROBE_MIN_FREE // 1024} KiB free", store=self.name)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None:
        path = self.path_of(key)
        tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise store_error(self.name, "write", key, exc) from exc

    def get_file(self, key: str, dest: Path) -> None:
        """Copies the object to a local file in chunks (videos do not fit in memory)."""
        import shutil

        try:
            with open(self.path_of(key), "rb") as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError("store.read_failed", f"cannot read {key!r} from {self.name}: {exc.strerror}") from exc

    def put_file(self, key: str, src: Path, *, content_type: str = "application/octet-stream",
                 metadata: dict[str, str] | None = None) -> None:
        """Like ``put`` for a local file, streamed: temp file, fsync, rename, so the object
        appears only when complete."""
        import shutil

        path = self.path_of(key)
        tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin, open(tmp, "wb") as fh:
                shutil.copyfileobj(fin, fh, 1 << 20)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StoreError("store.write_failed", f"cannot write {key!r} to {self.name}: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            path.unlink(missing_ok=True)
            if self.fsync and path.parent.exists():
                _fsync_dir(path.parent)
        except OSError as exc:
            raise store_error(self.name, "delete", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                if fn.startswith(TMP_PREFIX):
                    continue
                p = Path(dirpath) / fn
                try:
                    st = p.stat()
                    yield ObjectInfo(self.key_of(p), st.st_size, f"{st.st_size}-{st.st_mtime_ns}")
                except (OSError, UnsafeKey):
                    continue

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri() if "\n" not in key else f"file://{self.root}/{key!r}"

    def move_to(self, key: str, dest: Store, dest_key: str) -> None:
        """A rename when both ends are folders on one file system; copy+delete otherwise."""
        if isinstance(dest, LocalStore):
            try:
                target = dest.path_of(dest_key)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path_of(key), target)
                if dest.fsync:
                    _fsync_dir(target.parent)
                return
            except OSError:
                pass  # another file system (EXDEV) or a permission problem: copy instead
        super().move_to(key, dest, dest_key)

    def same_location(self, key: str, other: Store, other_key: str) -> bool:
        if isinstance(other, LocalStore):
            try:
                return self.path_of(key).resolve() == other.path_of(other_key).resolve()
            except (OSError, UnsafeKey):
                return False
        return False


STORES.register("local", lambda name, cfg: LocalStore(name, cfg.root, fsync=cfg.fsync))
