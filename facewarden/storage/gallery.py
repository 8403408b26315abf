"""The face gallery: enrolled subjects and their embeddings, in SQLite in the state dir.

Embeddings are biometric data (GDPR art. 9, PIPL art. 28), so the gallery is built to keep
them minimal and erasable:

- it stores embeddings, never face pixels; each row names the sha256 of the photo it came
  from (what makes enrolment idempotent) and the key it was read from;
- with a key file, embedding blobs, display names and consent texts are sealed with
  AES-256-GCM, each bound (as associated data) to its row, so a blob cannot be moved to
  another subject; without the key nothing biometric can be read, and opening refuses;
- ``delete`` runs with ``secure_delete`` on, then VACUUMs and truncates the WAL, so the
  freed pages that held the embeddings no longer exist anywhere in the files.

Search is one matrix product over every embedding of a backend, cached in memory and
reloaded when the ``generation`` counter (bumped by every write, any process) changes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from facewarden.errors import FacewardenError
from facewarden.storage.sqlite_db import connect_shared

log = structlog.get_logger("facewarden.gallery")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY,
    name BLOB,
    consent BLOB,
    created REAL NOT NULL,
    retain_until REAL
);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    backend TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    photo_sha256 TEXT NOT NULL,
    source_key BLOB,
    created REAL NOT NULL,
    UNIQUE (subject, backend, photo_sha256)
);
CREATE INDEX IF NOT EXISTS embeddings_backend ON embeddings(backend);
"""
_MAGIC = b"FWG1"
_CHECK = b"facewarden-gallery-key-check"


class GalleryError(FacewardenError):
    """The gallery cannot be opened or used as asked (locked, wrong key, unknown subject)."""

    code = "gallery.error"
    retryable = False


@dataclass(frozen=True, slots=True)
class Match:
    subject: str
    distance: float


def generate_key_file(path: Path) -> None:
    """Writes a new random 256-bit key (base64, one line), readable by the owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")


def read_key_file(path: Path) -> bytes:
    """A key file holds 32 raw bytes, or 64 hex digits, or base64 of 32 bytes."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise GalleryError("gallery.key_unreadable", f"cannot read the gallery key file {path}: "
                           f"{exc.strerror or exc}") from exc
    if len(raw) == 32:
        return raw
    text = raw.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(key) == 32:
            return key
    raise GalleryError("gallery.key_invalid", f"the key file {path} does not hold a 256-bit key "
                       "(32 bytes raw, 64 hex digits or base64); create one with `facewarden subjects keygen`")


class _Sealer:
    """AES-GCM with a random 96-bit nonce per value; ``aad`` binds a value to its row."""

    def __init__(self, key: bytes | None):
        self.enabled = key is not None
        if key is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(key)

    def seal(self, data: bytes, aad: str) -> bytes:
        if not self.enabled:
            return data
        nonce = secrets.token_bytes(12)
        return _MAGIC + nonce + self._aead.encrypt(nonce, data, aad.encode())

    def open(self, blob: bytes, aad: str) -> bytes:
        if not self.enabled:
            return bytes(blob)
        from cryptography.exceptions import InvalidTag

        blob = bytes(blob)
        if not blob.startswith(_MAGIC):
            raise GalleryError("gallery.corrupt", "a gallery value is not sealed although the gallery is encrypted")
        try:
            return self._aead.decrypt(blob[4:16], blob[16:], aad.encode())
        except InvalidTag as exc:
            raise GalleryError("gallery.key_invalid", "a gallery value does not open with this key "
                               "(wrong key, or the value was tampered with)") from exc


class Gallery:
    """Safe to share across threads (one SQLite connection per thread) and processes."""

    def __init__(self, state_dir: Path, key: bytes | None = None):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "gallery.db"
        self._local = threading.local()
        self._sealer = _Sealer(key)
        self._cache: dict[str, tuple[int, np.ndarray, np.ndarray, list[str], np.ndarray]] = {}
        self._cache_lock = threading.Lock()
        self._pid = os.getpid()
        self._check_key()

    # -- connection and key ------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", 0) != os.getpid():
            conn = connect_shared(self.path, _SCHEMA)
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
                         "DO UPDATE SET value = CAST(value AS INTEGER) + 1")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _check_key(self) -> None:
        """Refuses a gallery sealed with another key, or sealed while no key is given, or
        plain while a key is given (mixing would leave plaintext next to sealed rows)."""
        row = self._db().execute("SELECT value FROM meta WHERE key = 'encryption'").fetchone()
        if row is None:
            self._init_encryption()
            row = self._db().execute("SELECT value FROM meta WHERE key = 'encryption'").fetchone()
        info = json.loads(row[0])
        if info["mode"] == "none" and self._sealer.enabled:
            raise GalleryError("gallery.not_encrypted", f"the gallery at {self.path} is not encrypted but a key "
                               "file was given; remove gallery.key_file or start a new gallery")
        if info["mode"] != "none":
            if not self._sealer.enabled:
                raise GalleryError("gallery.locked", f"the gallery at {self.path} is encrypted: pass its key "
                                   "file (--key-file, or gallery.key_file in the config)")
            if self._sealer.open(base64.b64decode(info["check"]), "key-check") != _CHECK:
                raise GalleryError("gallery.key_invalid", "the key file does not open this gallery")

    def _init_encryption(self) -> None:
        """Records, once per gallery, whether it is sealed, with a sealed check value."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM meta WHERE key = 'encryption'").fetchone():
                return  # another process got there first
            has_data = conn.execute("SELECT 1 FROM subjects LIMIT 1").fetchone() is not None
            mode = "none" if has_data or not self._sealer.enabled else "aes-256-gcm"
            check = base64.b64encode(self._sealer.seal(_CHECK, "key-check")).decode() if mode != "none" else ""
            conn.execute("INSERT INTO meta(key, value) VALUES ('encryption', ?)",
                         (json.dumps({"mode": mode, "check": check}),))

    @property
    def encrypted(self) -> bool:
        return self._sealer.enabled

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- text and vectors ------------------------------------------------------------------
    def _seal_text(self, text: str | None, aad: str) -> bytes | None:
        return None if text is None else self._sealer.seal(text.encode("utf-8"), aad)

    def _open_text(self, blob: bytes | None, aad: str) -> str | None:
        return None if blob is None else self._sealer.open(blob, aad).decode("utf-8")

    @staticmethod
    def _vec_aad(subject: str, backend: str, photo_sha256: str) -> str:
        return f"vec|{subject}|{backend}|{photo_sha256}"

    # -- writing ---------------------------------------------------------------------------
    def upsert_subject(self, subject: str, *, name: str | None = None, consent: str | None = None,
                       retain_until: float | None = None) -> None:
        """Creates the subject, or updates the fields given (None = leave as is)."""
        with self._write() as conn:
            self._upsert(conn, subject, name, consent, retain_until)

    def _upsert(self, conn: sqlite3.Connection, subject: str, name: str | None, consent: str | None,
                retain_until: float | None) -> None:
        exists = conn.execute("SELECT 1 FROM subjects WHERE id = ?", (subject,)).fetchone()
        if not exists:
            conn.execute("INSERT INTO subjects(id, name, consent, created, retain_until) VALUES (?,?,?,?,?)",
                         (subject, self._seal_text(name, f"name|{subject}"),
                          self._seal_text(consent, f"consent|{subject}"), time.time(), retain_until))
            return
        if name is not None:
            conn.execute("UPDATE subjects SET name = ? WHERE id = ?", (self._seal_text(name, f"name|{subject}"),
                                                                         subject))
        if consent is not None:
            conn.execute("UPDATE subjects SET consent = ? WHERE id = ?",
                         (self._seal_text(consent, f"consent|{subject}"), subject))
        if retain_until is not None:
            conn.execute("UPDATE subjects SET retain_until = ? WHERE id = ?", (retain_until, subject))

    def add_embedding(self, subject: str, backend: str, vector: np.ndarray, *, photo_sha256: str,
                      source_key: str | None = None, name: str | None = None, consent: str | None = None,
                      retain_until: float | None = None) -> bool:
        """Adds one embedding (creating the subject); False when this photo is already
        enrolled for this subject and backend, which makes a retried job a no-op."""
        vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(vec)):
            raise GalleryError("gallery.bad_vector", "refusing to store a non-finite embedding")
        with self._write() as conn:
            self._upsert(conn, subject, name, consent, retain_until)
            cur = conn.execute(
                "INSERT OR IGNORE INTO embeddings(subject, backend, dim, vector, photo_sha256, source_key, created)"
                " VALUES (?,?,?,?,?,?,?)",
                (subject, backend, vec.size, self._sealer.seal(vec.tobytes(), self._vec_aad(subject, backend,
                                                                                             photo_sha256)),
                 photo_sha256, self._seal_text(source_key, f"key|{subject}|{photo_sha256}"), time.time()))
            added = cur.rowcount == 1
        log.info("gallery.embedding_added" if added else "gallery.embedding_exists", subject=subject,
                 backend=backend)
        return added

    def delete(self, subject: str) -> int:
        """Erases the subject, its embeddings and photo references; returns how many
        embeddings were removed. Raises GalleryError('gallery.unknown_subject')."""
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM subjects WHERE id = ?", (subject,)).fetchone():
                raise GalleryError("gallery.unknown_subject", f"no subject {subject!r} in the gallery")
            n = conn.execute("DELETE FROM embeddings WHERE subject = ?", (subject,)).rowcount
            conn.execute("DELETE FROM subjects WHERE id = ?", (subject,))
        self._scrub()
        log.info("gallery.subject_deleted", subject=subject, embeddings=n)
        return n

    def purge_expired(self, now: float) -> list[str]:
        """Deletes every subject whose retention date has passed; returns their ids."""
        rows = self._db().execute("SELECT id FROM subjects WHERE retain_until IS NOT NULL AND retain_until <= ?",
                                  (now,)).fetchall()
        purged = []
        for (subject,) in rows:
            try:
                self.delete(subject)
                purged.append(subject)
            except GalleryError:
                continue  # deleted meanwhile by someone else
        return purged

    def _scrub(self) -> None:
        """secure_delete zeroes freed cells, VACUUM rewrites the file without free pages,
        and a truncating checkpoint empties the WAL, which still held the old pages."""
        conn = self._db()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading ---------------------------------------------------------------------------
    def subjects(self) -> list[dict[str, Any]]:
        out = []
        for sid, name, consent, created, retain in self._db().execute(
                "SELECT id, name, consent, created, retain_until FROM subjects ORDER BY id").fetchall():
            counts = dict(self._db().execute("SELECT backend, COUNT(*) FROM embeddings WHERE subject = ? "
                                             "GROUP BY backend", (sid,)).fetchall())
            out.append({"id": sid, "name": self._open_text(name, f"name|{sid}"),
                        "consent": self._open_text(consent, f"consent|{sid}"), "created": created,
                        "retain_until": retain, "embeddings": counts})
        return out

    def export(self, subject: str) -> dict[str, Any]:
        """Everything stored about one subject, embeddings included (an access request)."""
        match = [s for s in self.subjects() if s["id"] == subject]
        if not match:
            raise GalleryError("gallery.unknown_subject", f"no subject {subject!r} in the gallery")
        rows = self._db().execute("SELECT backend, dim, vector, photo_sha256, source_key, created FROM embeddings "
                                  "WHERE subject = ? ORDER BY id", (subject,)).fetchall()
        embs = []
        for backend, dim, blob, sha, key, created in rows:
            vec = np.frombuffer(self._sealer.open(blob, self._vec_aad(subject, backend, sha)), dtype=np.float32)
            embs.append({"backend": backend, "dim": dim, "photo_sha256": sha,
                         "source_key": self._open_text(key, f"key|{subject}|{sha}"), "created": created,
                         "vector": [float(x) for x in vec]})
        s = match[0]
        return {"subject": {k: s[k] for k in ("id", "name", "consent", "created", "retain_until")},
                "embeddings": embs, "encrypted_at_rest": self.encrypted}

    def count(self, backend: str | None = None) -> int:
        if backend is None:
            return self._db().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self._db().execute("SELECT COUNT(*) FROM embeddings WHERE backend = ?", (backend,)).fetchone()[0]

    def _matrix(self, backend: str) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """(vectors sorted by subject, start index of each subject's run, subject ids,
        squared row norms: computed once per load, not per query)."""
        gen = int(self._meta("generation") or 0)
        with self._cache_lock:
            hit = self._cache.get(backend)
            if hit is not None and hit[0] == gen:
                return hit[1], hit[2], hit[3], hit[4]
        rows = self._db().execute("SELECT subject, vector, photo_sha256 FROM embeddings WHERE backend = ? "
                                  "ORDER BY subject, id", (backend,)).fetchall()
        vecs = [np.frombuffer(self._sealer.open(b, self._vec_aad(s, backend, sha)), dtype=np.float32)
                for s, b, sha in rows]
        subjects = [r[0] for r in rows]
        mat, starts, ids = _runs(subjects, vecs)
        norms = np.einsum("ij,ij->i", mat, mat)
        with self._cache_lock:
            self._cache[backend] = (gen, mat, starts, ids, norms)
        return mat, starts, ids, norms

    def nearest(self, backend: str, vectors: np.ndarray, *, k: int = 1,
                exclude: str | None = None) -> list[list[Match]]:
        """For each query vector, the ``k`` nearest subjects (a subject's distance is that of
        its nearest embedding), Euclidean, nearest first; empty lists on an empty gallery."""
        mat, starts, ids, norms = self._matrix(backend)
        return search_matrix(mat, starts, ids, vectors, k=k, exclude=exclude, norms=norms)


def _runs(subjects: list[str], vecs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not vecs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), []
    mat = np.vstack(vecs).astype(np.float32, copy=False)
    starts, ids = [], []
    for i, s in enumerate(subjects):
        if not ids or ids[-1] != s:
            starts.append(i)
            ids.append(s)
    return mat, np.asarray(starts, np.int64), ids


def search_matrix(mat: np.ndarray, starts: np.ndarray, ids: list[str], vectors: np.ndarray, *, k: int = 1,
                  exclude: str | None = None, norms: np.ndarray | None = None) -> list[list[Match]]:
    """Vectorised nearest-subject search: squared distances by one matrix product, then the
    per-subject minimum by ``np.minimum.reduceat`` over the subject-sorted rows."""
    q = np.atleast_2d(np.asarray(vectors, np.float32))
    if mat.shape[0] == 0:
        return [[] for _ in range(q.shape[0])]
    if q.shape[1] != mat.shape[1]:
        raise GalleryError("gallery.dim_mismatch", f"query has {q.shape[1]} dimensions, gallery {mat.shape[1]}")
    if norms is None:
        norms = np.einsum("ij,ij->i", mat, mat)
    sq = q @ mat.T
    sq *= -2.0
    sq += norms[None, :]
    sq += np.einsum("ij,ij->i", q, q)[:, None]
    per_subject = np.minimum.reduceat(sq, starts, axis=1)
    if exclude is not None and exclude in ids:
        per_subject[:, ids.index(exclude)] = np.inf
    out = []
    kk = min(k, len(ids))
    for row in per_subject:
        idx = np.argpartition(row, kk - 1)[:kk] if kk < len(ids) else np.arange(len(ids))
        idx = idx[np.argsort(row[idx])]
        out.append([Match(ids[i], float(np.sqrt(max(row[i], 0.0)))) for i in idx if np.isfinite(row[i])])
    return out


_OPEN: dict[tuple[str, str], Gallery] = {}
_OPEN_LOCK = threading.Lock()


def open_gallery(state_dir: Path, key_file: Path | None = None) -> Gallery:
    """The gallery of a state dir; one object per (dir, key file) per process, so its
    search cache is shared. Raises GalleryError when the key does not fit the gallery."""
    key = read_key_file(Path(key_file)) if key_file is not None else None
    ident = (str(Path(state_dir).resolve()), str(Path(key_file).resolve()) if key_file else "")
    with _OPEN_LOCK:
        g = _OPEN.get(ident)
        if g is None or g._sealer.enabled != (key is not None) or os.getpid() != g._pid:
            g = Gallery(Path(state_dir), key)
            _OPEN[ident] = g
        return g
