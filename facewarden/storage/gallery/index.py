"""The in-process search index: every vector of every backend in one float32 matrix per
backend, searched by one matrix product per query batch.

It is updated row by row (an enrolment or erasure seen by LISTEN/NOTIFY costs no reload)
and replaced whole after a full load. Each row carries the gallery generation that added
it, so an erasure event removes only rows older than itself: a subject erased and enrolled
again is not hit by a late copy of the old erasure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from facewarden.storage.gallery.base import GalleryError, Match


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    subject: str
    backend: str
    gen: int
    vector: np.ndarray


class _Table:
    """One backend's rows. Deleted rows keep their slot (norm = inf: never nearest) until
    more than half are dead, then the arrays are compacted."""

    def __init__(self, dim: int, capacity: int = 1024):
        self.dim = dim
        self.n = 0
        self.dead = 0
        self.mat = np.zeros((capacity, dim), np.float32)
        self.norms = np.full(capacity, np.inf, np.float32)
        self.subj = np.full(capacity, -1, np.int32)
        self.gens = np.zeros(capacity, np.int64)
        self.row_of: dict[int, int] = {}  # embedding id -> slot
        self.id_of: dict[int, int] = {}  # slot -> embedding id

    def _grow(self, need: int) -> None:
        cap = self.mat.shape[0]
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name, fill in (("mat", 0.0), ("norms", np.inf), ("subj", -1), ("gens", 0)):
            old = getattr(self, name)
            arr = np.full((new, *old.shape[1:]), fill, old.dtype)
            arr[: self.n] = old[: self.n]
            setattr(self, name, arr)

    def add(self, emb_id: int, sidx: int, gen: int, vec: np.ndarray) -> bool:
        if emb_id in self.row_of or vec.shape[0] != self.dim:
            return False  # a row of another size under this backend's name cannot be searched
        self._grow(self.n + 1)
        i = self.n
        self.mat[i] = vec
        self.norms[i] = float(vec @ vec)
        self.subj[i] = sidx
        self.gens[i] = gen
        self.row_of[emb_id] = i
        self.id_of[i] = emb_id
        self.n += 1
        return True

    def remove(self, sidx: int, before_gen: int | None) -> int:
        live = self.subj[: self.n] == sidx
        if before_gen is not None:
            live &= self.gens[: self.n] < before_gen
        slots = np.flatnonzero(live)
        for i in slots:
            self.norms[i] = np.inf
            self.subj[i] = -1
            self.mat[i] = 0.0
            del self.row_of[self.id_of.pop(int(i))]
        self.dead += len(slots)
        if self.dead > 1024 and self.dead * 2 > self.n:
            self._compact()
        return len(slots)

    def _compact(self) -> None:
        keep = np.flatnonzero(self.subj[: self.n] >= 0)
        ids = [self.id_of[int(i)] for i in keep]
        self.mat = np.ascontiguousarray(self.mat[keep])
        self.norms = self.norms[keep].copy()
        self.subj = self.subj[keep].copy()
        self.gens = self.gens[keep].copy()
        self.n = len(keep)
        self.dead = 0
        self.row_of = {e: i for i, e in enumerate(ids)}
        self.id_of = dict(enumerate(ids))

    @property
    def alive(self) -> int:
        return self.n - self.dead


class VectorIndex:
    """Thread-safe; searches hold the lock (a search over 100k rows takes a few ms)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tables: dict[str, _Table] = {}
        self._subjects: list[str] = []
        self._sidx: dict[str, int] = {}
        self.generation = -1  # nothing loaded yet

    @property
    def loaded(self) -> bool:
        return self.generation >= 0

    def _subject_index(self, subject: str) -> int:
        i = self._sidx.get(subject)
        if i is None:
            i = self._sidx[subject] = len(self._subjects)
            self._subjects.append(subject)
        return i

    def replace(self, rows: Iterable[Row], generation: int) -> None:
        tables: dict[str, _Table] = {}
        subjects: list[str] = []
        sidx: dict[str, int] = {}
        for r in rows:
            t = tables.get(r.backend)
            if t is None:
                t = tables[r.backend] = _Table(r.vector.shape[0])
            i = sidx.get(r.subject)
            if i is None:
                i = sidx[r.subject] = len(subjects)
                subjects.append(r.subject)
            t.add(r.id, i, r.gen, r.vector)
        with self._lock:
            self._tables, self._subjects, self._sidx = tables, subjects, sidx
            self.generation = generation

    def add(self, row: Row) -> bool:
        with self._lock:
            t = self._tables.get(row.backend)
            if t is None:
                t = self._tables[row.backend] = _Table(row.vector.shape[0])
            added = t.add(row.id, self._subject_index(row.subject), row.gen, row.vector)
            self.generation = max(self.generation, row.gen)
            return added

    def remove_subject(self, subject: str, before_gen: int | None = None) -> int:
        """Drops the subject's rows (only those added before ``before_gen`` when given)."""
        with self._lock:
            if before_gen is not None:
                self.generation = max(self.generation, before_gen)
            i = self._sidx.get(subject)
            if i is None:
                return 0
            return sum(t.remove(i, before_gen) for t in self._tables.values())

    def note_generation(self, gen: int) -> None:
        with self._lock:
            self.generation = max(self.generation, gen)

    def count(self, backend: str | None = None) -> int:
        with self._lock:
            if backend is not None:
                t = self._tables.get(backend)
                return t.alive if t else 0
            return sum(t.alive for t in self._tables.values())

    def search(self, backend: str, vectors: np.ndarray, *, k: int = 1, exclude: str | None = None
               ) -> list[list[Match]]:
        q = np.atleast_2d(np.asarray(vectors, np.float32))
        with self._lock:
            t = self._tables.get(backend)
            if t is None or t.alive == 0 or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])]
            if q.shape[1] != t.dim:
                raise GalleryError("gallery.dim_mismatch", f"query has {q.shape[1]} dimensions, gallery {t.dim}")
            n = t.n
            d2 = q @ t.mat[:n].T
            d2 *= -2.0
            d2 += t.norms[:n][None, :]
            d2 += np.einsum("ij,ij->i", q, q)[:, None]
            subj = t.subj[:n]
            if exclude is not None and exclude in self._sidx:
                d2[:, subj == self._sidx[exclude]] = np.inf
            return [self._top_subjects(row, subj, k) for row in d2]

    def _top_subjects(self, d2: np.ndarray, subj: np.ndarray, k: int) -> list[Match]:
        """The k nearest distinct subjects: sorted rows until k subjects are seen (a
        subject's distance is its nearest row's); widens to every row if needed."""
        if k == 1:  # a check-in's question: one argmin
            i = int(np.argmin(d2))
            if not np.isfinite(d2[i]):
                return []
            return [Match(self._subjects[int(subj[i])], float(np.sqrt(max(float(d2[i]), 0.0))))]
        n = d2.shape[0]
        m = min(n, max(32, 8 * k))
        while True:
            idx = np.argpartition(d2, m - 1)[:m] if m < n else np.arange(n)
            idx = idx[np.argsort(d2[idx], kind="stable")]
            out: list[Match] = []
            seen: set[int] = set()
            for i in idx:
                if not np.isfinite(d2[i]):
                    break
                s = int(subj[i])
                if s in seen:
                    continue
                seen.add(s)
                out.append(Match(self._subjects[s], float(np.sqrt(max(float(d2[i]), 0.0)))))
                if len(out) == k:
                    return out
            if m >= n or (len(idx) and not np.isfinite(d2[idx[-1]])):
                return out
            m = min(n, m * 8)
