"""A watched folder (local disk or SMB/NFS share) as a source.

What it must survive (lessons from paperless-ngx's consumer): files that are still being
copied, close events that never come (a file written right after its new sub-folder was
created), network mounts that deliver no inotify events at all, and files that were
already there when the daemon started. So: events (inotify) or polling only nominate
candidates; a candidate is emitted once its size and mtime have been stable for the
stability delay (a close-after-write shortens that wait); full rescans at start and on a
schedule catch whatever the event stream missed.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from facewarden.config.schema import FolderSourceConfig
from facewarden.daemon.jobs import Event
from facewarden.daemon.sources import Emit, SourceContext, register_source
from facewarden.errors import ConfigError, UnsafeKey
from facewarden.storage.local import TMP_PREFIX, LocalStore

log = structlog.get_logger("facewarden.source.folder")

NETWORK_FS = {"cifs", "smb3", "smbfs", "nfs", "nfs4", "fuse.sshfs", "9p", "afpfs", "davfs", "fuse.rclone"}


def mount_fstype(path: Path, mounts_file: Path = Path("/proc/mounts")) -> str:
    """The file system type of the mount that holds ``path`` (longest mount-point prefix)."""
    target = str(path.resolve())
    best, fstype = "", ""
    try:
        for line in mounts_file.read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            point = parts[1].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, fstype = point, parts[2]
    except OSError:
        return ""
    return fstype


@dataclass(slots=True)
class _Candidate:
    size: int
    mtime_ns: int
    changed_at: float  # when we last saw size/mtime change (monotonic)
    closed: bool = False


class FolderSource:
    def __init__(self, cfg: FolderSourceConfig, store: LocalStore):
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.root = store.root
        self._pending: dict[Path, _Candidate] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._observer = None
        self._emit: Emit | None = None
        self.mode = self._choose_mode()

    def _choose_mode(self) -> str:
        if self.cfg.mode != "auto":
            return self.cfg.mode
        fstype = mount_fstype(self.root)
        return "poll" if fstype in NETWORK_FS else "inotify"

    # -- filtering -------------------------------------------------------------------
    def ignored(self, path: Path) -> bool:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return True
        for part in rel.parts:
            if part.startswith(TMP_PREFIX) or any(fnmatch.fnmatchcase(part, pat) for pat in self.cfg.ignore):
                return True
        return not self.cfg.recursive and len(rel.parts) > 1

    # -- candidates ------------------------------------------------------------------
    def nominate(self, path: Path, *, closed: bool = False) -> None:
        if self.ignored(path):
            return
        try:
            st = path.stat()
        except OSError:
            return
        if not path.is_file():
            if path.is_dir():  # a new sub-folder may already hold files we got no event for
                self.scan(path)
            return
        now = time.monotonic()
        with self._lock:
            cand = self._pending.get(path)
            if cand is None or (cand.size, cand.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._pending[path] = _Candidate(st.st_size, st.st_mtime_ns, now, closed)
            elif closed:
                cand.closed = True

    def scan(self, base: Path | None = None) -> int:
        """Nominates every file under ``base`` (the root by default)."""
        n = 0
        for dirpath, dirnames, filenames in os.walk(base or self.root):
            d = Path(dirpath)
            dirnames[:] = [x for x in dirnames if not self.ignored(d / x)]
            for fn in filenames:
                self.nominate(d / fn)
                n += 1
        return n

    def _check(self) -> None:
        now = time.monotonic()
        wall = time.time()
        ready: list[tuple[Path, _Candidate]] = []
        with self._lock:
            items = list(self._pending.items())
        for path, cand in items:
            try:
                st = path.stat()
            except OSError:
                with self._lock:
                    self._pending.pop(path, None)
                continue
            if (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns):
                cand.size, cand.mtime_ns, cand.changed_at, cand.closed = st.st_size, st.st_mtime_ns, now, False
                continue
            waited = now - cand.changed_at
            old_enough = wall - st.st_mtime_ns / 1e9 >= self.cfg.stability_delay and waited > 0.1
            if waited >= self.cfg.stability_delay or (cand.closed and waited >= self.cfg.close_delay) or old_enough:
                ready.append((path, cand))
        for path, cand in ready:
            with self._lock:
                if self._pending.get(path) is cand:
                    del self._pending[path]
            self._emit_file(path, cand)

    def _emit_file(self, path: Path, cand: _Candidate) -> None:
        try:
            key = self.store.key_of(path)
        except (UnsafeKey, ValueError) as err:
            log.warning("source.unsafe_name", source=self.name, reason=str(err))
            return
        assert self._emit is not None
        try:
            self._emit(Event(store=self.store.name, key=key, source=self.name,
                             version=f"{cand.size}-{cand.mtime_ns}", hints={"size": cand.size}))
        except Exception as exc:
            log.error("source.emit_failed", source=self.name, error=type(exc).__name__, detail=str(exc)[:200])

    # -- lifecycle -------------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        self._emit = emit
        self.root.mkdir(parents=True, exist_ok=True)
        handler = _Handler(self)
        if self.mode == "poll":
            self._observer = PollingObserver(timeout=self.cfg.poll_interval)
        else:
            self._observer = Observer()
        self._observer.schedule(handler, str(self.root), recursive=self.cfg.recursive)
        self._observer.start()
        self.scan()
        self._threads = [threading.Thread(target=self._loop, name=f"folder-{self.name}", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("source.started", source=self.name, mode=self.mode)

    def _loop(self) -> None:
        last_scan = time.monotonic()
        while not self._stop.wait(0.02):
            self._check()
            if time.monotonic() - last_scan >= self.cfg.rescan_interval:
                last_scan = time.monotonic()
                self.scan()

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        for t in self._threads:
            t.join(5)

    def ready(self) -> bool:
        return bool(self._observer and self._observer.is_alive())


class _Handler(FileSystemEventHandler):
    def __init__(self, source: FolderSource):
        self.source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in ("deleted", "opened", "closed_no_write"):
            return
        path = Path(os.fsdecode(event.dest_path if kind == "moved" else event.src_path))
        # A rename into the folder delivers a file that is already complete (the usual
        # "write to a temp name, then rename" drop), so it counts like a close.
        self.source.nominate(path, closed=kind in ("closed", "moved"))


def _strict(cfg: Any) -> FolderSourceConfig:
    """A folder source whose options did not validate arrives as a generic source config
    (the union's fallback); validate it again so the error names the bad key instead of
    failing later with an AttributeError."""
    if isinstance(cfg, FolderSourceConfig):
        return cfg
    data = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg)
    try:
        return FolderSourceConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"sources[{data.get('name', '?')}].{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors())
        raise ConfigError("config.invalid", problems) from None


def _factory(cfg: FolderSourceConfig, ctx: SourceContext) -> FolderSource:
    cfg = _strict(cfg)
    store = ctx.stores.get(cfg.store)
    if not isinstance(store, LocalStore):
        raise ConfigError("config.invalid", f"sources.{cfg.name}.store: a folder source needs a local store")
    return FolderSource(cfg, store)


register_source("folder", _factory)
