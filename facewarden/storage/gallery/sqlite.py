"""The embedded gallery: one SQLite file in the state dir (one host, any number of processes).

- Embeddings, never face pixels; each row names the sha256 of the photo it came from
  (what makes enrolment idempotent) and the key it was read from.
- With a gallery key, values are sealed by a per-subject data key (see ``sealing``); the
  wrapped data keys live in the same file, so here erasure relies on the file itself:
- ``delete`` runs with ``secure_delete`` on, then VACUUMs and truncates the WAL, so the
  freed pages that held the subject's key and embeddings no longer exist in the files.

Search goes through the in-process ``VectorIndex``, reloaded when the ``generation``
counter (bumped by every write, any process) changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from facewarden.storage.gallery.base import GalleryError, Match, check_vector, unknown_subject
from facewarden.storage.gallery.index import Row, VectorIndex
from facewarden.storage.gallery.sealing import DataKey, Keyring, consent_aad, key_aad, name_aad, vec_aad
from facewarden.storage.sqlite_db import connect_shared

log = structlog.get_logger("facewarden.gallery")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY,
    name BLOB,
    consent BLOB,
    created REAL NOT NULL,
    retain_until REAL,
    key_id TEXT
);
CREATE TABLE IF NOT EXISTS subject_keys (kid TEXT PRIMARY KEY, wrapped BLOB NOT NULL, created REAL NOT NULL);
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


class SqliteGallery:
    """Safe to share across threads (one SQLite connection per thread) and processes."""

    def __init__(self, state_dir: Path, key: bytes | None = None):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "gallery.db"
        self._local = threading.local()
        self._keys = Keyring(key)
        self._deks: dict[str, DataKey] = {}
        self._index = VectorIndex()
        self._load_lock = threading.Lock()
        self._pid = os.getpid()
        self._check_key()

    # -- connection and key ------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", 0) != os.getpid():
            conn = connect_shared(self.path, _SCHEMA)
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA foreign_keys=ON")
            cols = {r[1] for r in conn.execute("PRAGMA table_info(subjects)")}
            if "key_id" not in cols:  # a gallery from before per-subject data keys
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                    conn.execute("ALTER TABLE subjects ADD COLUMN key_id TEXT")
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

    def _check_key(self) -> None:
        """Refuses a gallery sealed with another key, or sealed while no key is given, or
        plain while a key is given (mixing would leave plaintext next to sealed rows)."""
        row = self._db().execute("SELECT value FROM meta WHERE key = 'encryption'").fetchone()
        if row is None:
            with self._write() as conn:
                if not conn.execute("SELECT 1 FROM meta WHERE key = 'encryption'").fetchone():
                    has_data = conn.execute("SELECT 1 FROM subjects LIMIT 1").fetchone() is not None
                    mode = "none" if has_data or not self._keys.enabled else "aes-256-gcm"
                    check = self._keys.check_value() if mode != "none" else ""
                    conn.execute("INSERT INTO meta(key, value) VALUES ('encryption', ?)",
                                 (json.dumps({"mode": mode, "check": check}),))
            row = self._db().execute("SELECT value FROM meta WHERE key = 'encryption'").fetchone()
        info = json.loads(row[0])
        if info["mode"] == "none" and self._keys.enabled:
            raise GalleryError("gallery.not_encrypted", f"the gallery at {self.path} is not encrypted but a key "
                               "file was given; remove gallery.key_file or start a new gallery")
        if info["mode"] != "none":
            if not self._keys.enabled:
                raise GalleryError("gallery.locked", f"the gallery at {self.path} is encrypted: pass its key "
                                   "file (--key-file, or gallery.key_file in the config)")
            if not self._keys.verify_check(info["check"]):
                raise GalleryError("gallery.key_invalid", "the key file does not open this gallery")

    @property
    def encrypted(self) -> bool:
        return self._keys.enabled

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _dek(self, kid: str | None) -> DataKey | None:
        """The subject's data key; None for a plain gallery or a subject from before data
        keys (its values are sealed by the gallery key itself)."""
        if kid is None or not self._keys.enabled:
            return None
        dek = self._deks.get(kid)
        if dek is None:
            row = self._db().execute("SELECT wrapped FROM subject_keys WHERE kid = ?", (kid,)).fetchone()
            if row is None:
                raise GalleryError("gallery.key_erased", "a subject's data key no longer exists (erased)")
            dek = self._deks[kid] = self._keys.unwrap(kid, row[0])
        return dek

    # -- writing ---------------------------------------------------------------------------
    def upsert_subject(self, subject: str, *, name: str | None = None, consent: str | None = None,
                       retain_until: float | None = None) -> None:
        with self._write() as conn:
            self._upsert(conn, subject, name, consent, retain_until)

    def _upsert(self, conn: sqlite3.Connection, subject: str, name: str | None, consent: str | None,
                retain_until: float | None) -> DataKey | None:
        row = conn.execute("SELECT key_id FROM subjects WHERE id = ?", (subject,)).fetchone()
        if row is None:
            dek = None
            if self._keys.enabled:
                dek, wrapped = self._keys.new_data_key()
                conn.execute("INSERT INTO subject_keys(kid, wrapped, created) VALUES (?,?,?)",
                             (dek.kid, wrapped, time.time()))
                self._deks[dek.kid] = dek
            conn.execute("INSERT INTO subjects(id, name, consent, created, retain_until, key_id) VALUES (?,?,?,?,?,?)",
                         (subject, self._keys.seal_text(name, name_aad(subject), dek),
                          self._keys.seal_text(consent, consent_aad(subject), dek), time.time(), retain_until,
                          dek.kid if dek else None))
            return dek
        dek = self._dek(row[0])
        if name is not None:
            conn.execute("UPDATE subjects SET name = ? WHERE id = ?",
                         (self._keys.seal_text(name, name_aad(subject), dek), subject))
        if consent is not None:
            conn.execute("UPDATE subjects SET consent = ? WHERE id = ?",
                         (self._keys.seal_text(consent, consent_aad(subject), dek), subject))
        if retain_until is not None:
            conn.execute("UPDATE subjects SET retain_until = ? WHERE id = ?", (retain_until, subject))
        return dek

    def add_embedding(self, subject: str, backend: str, vector: np.ndarray, *, photo_sha256: str,
                      source_key: str | None = None, name: str | None = None, consent: str | None = None,
                      retain_until: float | None = None) -> bool:
        vec = check_vector(vector)
        with self._write() as conn:
            dek = self._upsert(conn, subject, name, consent, retain_until)
            cur = conn.execute(
                "INSERT OR IGNORE INTO embeddings(subject, backend, dim, vector, photo_sha256, source_key, created)"
                " VALUES (?,?,?,?,?,?,?)",
                (subject, backend, vec.size, self._keys.seal(vec.tobytes(), vec_aad(subject, backend, photo_sha256),
                                                             dek),
                 photo_sha256, self._keys.seal_text(source_key, key_aad(subject, photo_sha256), dek), time.time()))
            added = cur.rowcount == 1
        log.info("gallery.embedding_added" if added else "gallery.embedding_exists", backend=backend)
        return added

    def delete(self, subject: str, *, expired_at: float | None = None) -> int:
        """``expired_at``: erase only if still past retention then (a purge racing an edit)."""
        with self._write() as conn:
            row = conn.execute("SELECT key_id, retain_until FROM subjects WHERE id = ?", (subject,)).fetchone()
            if row is None or (expired_at is not None and (row[1] is None or row[1] > expired_at)):
                raise unknown_subject(subject)
            if row[0] is not None:  # the data key first (crypto-shredding), then the rows
                conn.execute("DELETE FROM subject_keys WHERE kid = ?", (row[0],))
                self._deks.pop(row[0], None)
            n = conn.execute("DELETE FROM embeddings WHERE subject = ?", (subject,)).rowcount
            conn.execute("DELETE FROM subjects WHERE id = ?", (subject,))
        self._scrub()
        log.info("gallery.subject_deleted", embeddings=n)
        return n

    def purge_expired(self, now: float) -> list[str]:
        rows = self._db().execute("SELECT id FROM subjects WHERE retain_until IS NOT NULL AND retain_until <= ?",
                                  (now,)).fetchall()
        purged = []
        for (subject,) in rows:
            try:
                self.delete(subject, expired_at=now)
                purged.append(subject)
            except GalleryError:
                continue  # deleted (or its retention extended) meanwhile by someone else
            except sqlite3.Error as exc:
                # Report what is erased so far: each one needs its tombstone.
                log.warning("gallery.purge_interrupted", error=type(exc).__name__, purged=len(purged))
                break
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
        db = self._db()
        for sid, name, consent, created, retain, kid in db.execute(
                "SELECT id, name, consent, created, retain_until, key_id FROM subjects ORDER BY id").fetchall():
            counts = dict(db.execute("SELECT backend, COUNT(*) FROM embeddings WHERE subject = ? GROUP BY backend",
                                     (sid,)).fetchall())
            dek = self._dek(kid)
            out.append({"id": sid, "name": self._keys.open_text(name, name_aad(sid), dek),
                        "consent": self._keys.open_text(consent, consent_aad(sid), dek), "created": created,
                        "retain_until": retain, "embeddings": counts})
        return out

    def export(self, subject: str) -> dict[str, Any]:
        match = [s for s in self.subjects() if s["id"] == subject]
        if not match:
            raise unknown_subject(subject)
        db = self._db()
        (kid,) = db.execute("SELECT key_id FROM subjects WHERE id = ?", (subject,)).fetchone()
        dek = self._dek(kid)
        rows = db.execute("SELECT backend, dim, vector, photo_sha256, source_key, created FROM embeddings "
                          "WHERE subject = ? ORDER BY id", (subject,)).fetchall()
        embs = []
        for backend, dim, blob, sha, key, created in rows:
            vec = np.frombuffer(self._keys.open(blob, vec_aad(subject, backend, sha), dek), dtype=np.float32)
            embs.append({"backend": backend, "dim": dim, "photo_sha256": sha,
                         "source_key": self._keys.open_text(key, key_aad(subject, sha), dek), "created": created,
                         "vector": [float(x) for x in vec]})
        s = match[0]
        return {"subject": {k: s[k] for k in ("id", "name", "consent", "created", "retain_until")},
                "embeddings": embs, "encrypted_at_rest": self.encrypted}

    def count(self, backend: str | None = None) -> int:
        if backend is None:
            return self._db().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self._db().execute("SELECT COUNT(*) FROM embeddings WHERE backend = ?", (backend,)).fetchone()[0]

    def _fresh_index(self) -> VectorIndex:
        """Reloads the index when any process wrote since the last load (one cheap read)."""
        row = self._db().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        gen = int(row[0]) if row else 0
        if self._index.generation == gen:
            return self._index
        with self._load_lock:
            if self._index.generation == gen:
                return self._index
            db = self._db()
            db.execute("BEGIN")  # one snapshot: the generation and the rows it counts
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
                gen = int(row[0]) if row else 0
                data = db.execute("SELECT e.id, e.subject, e.backend, e.vector, e.photo_sha256, s.key_id "
                                  "FROM embeddings e JOIN subjects s ON s.id = e.subject ORDER BY e.id").fetchall()
                rows = [Row(i, s, b, 0, np.frombuffer(self._keys.open(v, vec_aad(s, b, sha), self._dek(kid)),
                                                      dtype=np.float32))
                        for i, s, b, v, sha, kid in data]
            finally:
                db.execute("COMMIT")
            self._index.replace(rows, gen)
        return self._index

    def nearest(self, backend: str, vectors: np.ndarray, *, k: int = 1,
                exclude: str | None = None) -> list[list[Match]]:
        return self._fresh_index().search(backend, vectors, k=k, exclude=exclude)
