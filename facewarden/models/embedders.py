"""Embedder factory: one instance per (backend, models dir) per process, built lazily."""

from __future__ import annotations

import threading
from pathlib import Path

from facewarden.models.protocols import Embedder

#: Backend names ``make_embedder`` knows; the first is the default.
NAMES = ("dlib", "facenet")
DEFAULT = "dlib"
#: Gallery rows record the embedder's model name; these map both spellings to one backend.
ALIASES = {"dlib": "dlib", "dlib-resnet-v1": "dlib", "facenet": "facenet", "facenet-20180408": "facenet"}

_CACHE: dict[tuple[str, str], Embedder] = {}
_LOCK = threading.Lock()


def make_embedder(name: str, models_dir: Path) -> Embedder:
    """Raises ValueError for an unknown name, ModelError when a model file is missing."""
    backend = ALIASES.get(name)
    if backend is None:
        raise ValueError(f"unknown embedder {name!r}; known: {', '.join(NAMES)}")
    key = (backend, str(Path(models_dir).resolve()))
    with _LOCK:
        emb = _CACHE.get(key)
        if emb is None:
            if backend == "dlib":
                from facewarden.models.embed_dlib import DlibEmbedder

                emb = DlibEmbedder(Path(models_dir))
            else:
                from facewarden.models.embed_facenet import FaceNetEmbedder

                emb = FaceNetEmbedder(Path(models_dir))
            _CACHE[key] = emb
        return emb
