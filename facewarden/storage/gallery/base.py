"""What every gallery backend offers (the seam), and the errors and results they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from facewarden.errors import FacewardenError


class GalleryError(FacewardenError):
    """The gallery cannot be opened or used as asked (locked, wrong key, unknown subject)."""

    code = "gallery.error"
    retryable = False


@dataclass(frozen=True, slots=True)
class Match:
    subject: str
    distance: float


class Gallery(Protocol):
    """Enrolled subjects and their embeddings. Implemented by ``SqliteGallery`` (one file in
    the state dir, one host) and ``PostgresGallery`` (one database for every host).

    Both seal names, consents, photo keys and vectors with a per-subject data key wrapped by
    the gallery key (when a key is given), so erasing a subject destroys its key first; both
    answer ``nearest`` from an in-process index, never from a per-query database scan."""

    @property
    def encrypted(self) -> bool: ...

    def upsert_subject(self, subject: str, *, name: str | None = None, consent: str | None = None,
                       retain_until: float | None = None) -> None:
        """Creates the subject, or updates the fields given (None = leave as is)."""
        ...

    def add_embedding(self, subject: str, backend: str, vector: np.ndarray, *, photo_sha256: str,
                      source_key: str | None = None, name: str | None = None, consent: str | None = None,
                      retain_until: float | None = None) -> bool:
        """Adds one embedding (creating the subject); False when this photo is already
        enrolled for this subject and backend, which makes a retried job a no-op."""
        ...

    def delete(self, subject: str) -> int:
        """Erases the subject (its data key first); returns how many embeddings went.
        Raises GalleryError('gallery.unknown_subject') when there is no such subject."""
        ...

    def purge_expired(self, now: float) -> list[str]:
        """Erases every subject past its retention date; returns the ids this call erased
        (when several hosts purge at once each subject is erased, and reported, once)."""
        ...

    def subjects(self) -> list[dict[str, Any]]: ...

    def export(self, subject: str) -> dict[str, Any]:
        """Everything stored about one subject, embeddings included (an access request)."""
        ...

    def count(self, backend: str | None = None) -> int: ...

    def nearest(self, backend: str, vectors: np.ndarray, *, k: int = 1,
                exclude: str | None = None) -> list[list[Match]]:
        """For each query vector, the ``k`` nearest subjects (a subject's distance is that of
        its nearest embedding), Euclidean, nearest first; empty lists on an empty gallery."""
        ...

    def close(self) -> None: ...


def check_vector(vector: np.ndarray) -> np.ndarray:
    vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(vec)):
        raise GalleryError("gallery.bad_vector", "refusing to store a non-finite embedding")
    return vec


def unknown_subject(subject: str) -> GalleryError:
    return GalleryError("gallery.unknown_subject", f"no subject {subject!r} in the gallery")
