"""A folder as a store. Writes are atomic (temp file in the same directory, fsync, rename,
fsync of the directory), so a reader or a crash never leaves a partial result visible."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from facewarden.errors import StoreError, UnsafeKey
from facewarden.storage.base import ObjectInfo, safe_key

#: Temp files start with a dot so that folder sources (which ignore dot files) never see them.
TMP_PREFIX = ".fw-tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
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
            raise StoreError("store.read_failed", f"cannot read {key!r} from {self.name}: {exc.strerror}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.path_of(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")

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
            raise StoreError("store.write_failed", f"cannot write {key!r} to {self.name}: {exc.strerror}") from exc

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
        path.unlink(missing_ok=True)
        if self.fsync and path.parent.exists():
            _fsync_dir(path.parent)

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
