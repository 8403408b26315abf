"""The face gallery: enrolled subjects and their embeddings (biometric data, GDPR art. 9,
PIPL art. 28), kept minimal, sealed and erasable.

One interface (``base.Gallery``), two backends: ``sqlite`` (the embedded default, a file
in the state dir) and ``postgres`` (one database shared by every host). ``sealing`` holds
the keys and the AES-GCM sealing both use; ``index`` the in-process search both use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from facewarden.storage.gallery.base import Gallery, GalleryError, Match
from facewarden.storage.gallery.sealing import generate_key_file, read_key_file
from facewarden.storage.gallery.sqlite import SqliteGallery

__all__ = [
    "Gallery",
    "GalleryError",
    "Match",
    "SqliteGallery",
    "gallery_configured",
    "generate_key_file",
    "open_configured",
    "open_gallery",
    "read_key_file",
]

_OPEN: dict[tuple[str, ...], tuple[int, Any]] = {}
_OPEN_LOCK = threading.Lock()


def open_gallery(state_dir: Path | None, key_file: Path | None = None, *, url: str | None = None,
                 password_file: Path | None = None, keys_url: str | None = None,
                 refresh_interval: float = 30.0) -> Gallery:
    """The gallery: PostgreSQL when ``url`` is given, else STATE/gallery.db. One object per
    place and key per process, so its index (and listener) is shared by the threads.
    Raises GalleryError when the key does not fit the gallery."""
    key = read_key_file(Path(key_file)) if key_file is not None else None
    where = url if url is not None else str(Path(state_dir or ".").resolve())
    ident = (where, str(Path(key_file).resolve()) if key_file else "", keys_url or "")
    with _OPEN_LOCK:
        hit = _OPEN.get(ident)
        if hit is not None and hit[0] == os.getpid() and not getattr(hit[1], "closed", False):
            return hit[1]
        if url is not None:
            from facewarden.storage.gallery.postgres import PostgresGallery, read_password_file

            password = read_password_file(password_file) if password_file is not None else None
            g: Any = PostgresGallery(url, key, password=password, keys_url=keys_url,
                                     refresh_interval=refresh_interval)
        else:
            g = SqliteGallery(Path(state_dir or "."), key)
        _OPEN[ident] = (os.getpid(), g)
        return g


def open_configured(settings: Any) -> Gallery:
    """The gallery the settings name (``[gallery]`` and ``state_dir``)."""
    cfg = settings.gallery
    return open_gallery(Path(settings.state_dir), cfg.key_file, url=cfg.url, password_file=cfg.password_file,
                        keys_url=cfg.keys_url, refresh_interval=cfg.refresh_interval)


def gallery_configured(settings: Any) -> bool:
    """False while an embedded gallery has no file yet (nobody enrolled: nothing to purge)."""
    return settings.gallery.url is not None or (Path(settings.state_dir) / "gallery.db").exists()
