"""Embedder factory: one instance per (backend, models dir) per process, built lazily."""

from __future__ import annotations

import threading
from pathlib import Path

from facewarden.models.backends import BackendRegistry
from facewarden.models.protocols import Embedder

#: Embedder backends: each registers itself in its own file (``EMBEDDERS.register``).
EMBEDDERS = BackendRegistry("embedder", ("facewarden.models.embed_dlib", "facewarden.models.embed_facenet"))

#: Backend names ``make_embedder`` knows; the first is the default.
NAMES = ("dlib", "facenet")
DEFAULT = "dlib"
#: Gallery rows record the embedder's model name; these map both spellings to one backend.
ALIASES = {"dlib": "dlib", "dlib-resnet-v1": "dlib", "facenet": "facenet", "facenet-20180408": "facenet"}

_CACHE: dict[tuple[str, str], Embedder] = {}
_LOCK = threading.Lock()


def make_embedder(name: str, models_dir: Path) -> Embedder:
    """Raises ``UnknownBackend`` (a name nobody registered), ModelError (a model file is missing)."""
    backend = ALIASES.get(name, name)
    build = EMBEDDERS.builder(backend)
    key = (backend, str(Path(models_dir).resolve()))
    with _LOCK:
        emb = _CACHE.get(key)
        if emb is None:
            emb = _CACHE[key] = build(Path(models_dir))
        return emb
