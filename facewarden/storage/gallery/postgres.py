"""The shared gallery: one PostgreSQL database for every host (psycopg 3).

Two databases on the server:

- the **gallery** (``[gallery] url``): subjects and embeddings, every value sealed by its
  subject's data key (a gallery key is required here: rows on a network server, in its
  WAL and its backups are out of this process's reach);
- the **key table** (``[gallery] keys_url``, default the gallery's name + ``_keys``): one
  wrapped data key per subject, nothing else. Erasure deletes the subject's key there
  first (crypto-shredding), then its rows in the gallery; a dead tuple, a WAL segment or a
  dump of the gallery keeps only ciphertext whose key is gone. Back the key database up
  on a short rotation: its backups are what an erasure has to outlive.

Every write bumps one generation counter and sends ``NOTIFY facewarden_gallery`` with the
new generation (delivered at commit, in commit order). Each process keeps its vectors in
an in-memory ``VectorIndex``, kept current by a listener thread; every ``refresh_interval``
the listener compares the counter with what it applied and reloads on a gap. When the
listener has not confirmed within ``STALE_AFTER`` s that it applied everything delivered,
a search checks the counter itself and reloads: an erasure is never missed for longer
than that bound (plus the notification's delivery, milliseconds).

Concurrent enrolments from many hosts are safe by row locks: a subject row is locked
(``FOR UPDATE``) by every write to it, and its data key is created once (an insert that
lost the race discards its own key and uses the winner's).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import structlog

from facewarden.storage.gallery.base import GalleryError, Match, check_vector, unknown_subject
from facewarden.storage.gallery.index import Row, VectorIndex
from facewarden.storage.gallery.sealing import DataKey, Keyring, consent_aad, key_aad, name_aad, vec_aad

log = structlog.get_logger("facewarden.gallery")

CHANNEL = "facewarden_gallery"
#: A listener that has not confirmed for this long that it applied every change delivered
#: to it is not trusted: searches then check the generation counter themselves.
STALE_AFTER = 1.0
#: How long such a search waits for a late listener before loading the index itself.
CATCH_UP = 0.3
_LOCK_ID = 7_431_001  # advisory lock serialising schema creation

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS gallery_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS gallery_generation (id INTEGER PRIMARY KEY CHECK (id = 1), gen BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS subjects (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        name BYTEA,
        consent BYTEA,
        created DOUBLE PRECISION NOT NULL,
        retain_until DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS embeddings (
        id BIGSERIAL PRIMARY KEY,
        subject TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        backend TEXT NOT NULL,
        dim INTEGER NOT NULL,
        vector BYTEA NOT NULL,
        photo_sha256 TEXT NOT NULL,
        source_key BYTEA,
        created DOUBLE PRECISION NOT NULL,
        gen BIGINT NOT NULL,
        UNIQUE (subject, backend, photo_sha256))""",
    "CREATE INDEX IF NOT EXISTS embeddings_subject ON embeddings(subject)",
    "CREATE INDEX IF NOT EXISTS embeddings_gen ON embeddings(gen)",
    "CREATE INDEX IF NOT EXISTS subjects_retain ON subjects(retain_until) WHERE retain_until IS NOT NULL",
)
_KEYS_SCHEMA = ("CREATE TABLE IF NOT EXISTS subject_keys (kid TEXT PRIMARY KEY, wrapped BYTEA NOT NULL, "
                "created DOUBLE PRECISION NOT NULL)",)
_ROWS = ("SELECT e.id, e.subject, e.backend, e.vector, e.photo_sha256, e.gen, s.key_id "
         "FROM embeddings e JOIN subjects s ON s.id = e.subject")


class _Retry(Exception):
    """The subject changed under this write (created or erased by another host)."""


def keys_url_for(url: str) -> str:
    """The default key database: the gallery's database name + ``_keys``, same server."""
    parts = urlsplit(url)
    db = parts.path.lstrip("/") or "facewarden"
    return urlunsplit(parts._replace(path=f"/{db}_keys"))


def _db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


class PostgresGallery:
    """One object per process (``open_gallery`` caches it): threads share its index and
    its listener; each thread has its own connections."""

    def __init__(self, url: str, key: bytes | None, *, password: str | None = None, keys_url: str | None = None,
                 refresh_interval: float = 30.0):
        if key is None:
            raise GalleryError("gallery.key_required", "a PostgreSQL gallery needs a gallery key: create one with "
                               "`facewarden subjects keygen FILE` and set gallery.key_file")
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self.keys_url = keys_url or keys_url_for(url)
        self._password = password
        self._keys = Keyring(key)
        self.refresh_interval = refresh_interval
        self._deks: dict[str, DataKey] = {}
        self._index = VectorIndex()
        self._synced = -1  # generation up to which the index is known complete
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._listener: threading.Thread | None = None
        self._alive = 0.0
        with self._errors():
            self._setup()

    # -- connections -------------------------------------------------------------------
    def _connect(self, url: str, role: str = "facewarden-gallery"):
        return self._psycopg.connect(url, password=self._password, autocommit=True, connect_timeout=10,
                                     application_name=role)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A lost or refused connection is a retryable gallery error, never a crash."""
        try:
            yield
        except self._psycopg.OperationalError as exc:
            self._local.__dict__.clear()
            raise GalleryError("gallery.unavailable", f"the gallery database failed or cannot be reached "
                               f"({type(exc).__name__}); try again", retryable=True) from exc

    def _conn(self, attr: str, url: str):
        conn = getattr(self._local, attr, None)
        if conn is None or conn.closed or conn.broken:
            conn = self._connect(url)
            setattr(self._local, attr, conn)
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _db(self):
        return self._conn("db", self.url)

    def _kdb(self):
        return self._conn("kdb", self.keys_url)

    def _setup(self) -> None:
        db = self._db()
        info = self._encryption_info(db)
        if info is None:
            # DDL only on a new gallery: CREATE INDEX IF NOT EXISTS still takes a share lock
            # on its table, which would deadlock with other hosts' enrolments.
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                for stmt in _SCHEMA:
                    db.execute(stmt)
                db.execute("INSERT INTO gallery_generation(id, gen) VALUES (1, 0) ON CONFLICT DO NOTHING")
                row = db.execute("SELECT value FROM gallery_meta WHERE key = 'encryption'").fetchone()
                if row is None:
                    info = {"mode": "aes-256-gcm/subject-keys", "check": self._keys.check_value()}
                    db.execute("INSERT INTO gallery_meta(key, value) VALUES ('encryption', %s)", (json.dumps(info),))
                else:
                    info = json.loads(row[0])
        if not self._keys.verify_check(info["check"]):
            raise GalleryError("gallery.key_invalid", "the key file does not open this gallery")
        try:
            kdb = self._kdb()
        except self._psycopg.OperationalError:
            self._create_keys_database()
            kdb = self._kdb()
        if kdb.execute("SELECT to_regclass('subject_keys')").fetchone()[0] is None:
            with kdb.transaction():
                kdb.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                for stmt in _KEYS_SCHEMA:
                    kdb.execute(stmt)

    @staticmethod
    def _encryption_info(db) -> dict[str, Any] | None:
        if db.execute("SELECT to_regclass('gallery_meta')").fetchone()[0] is None:
            return None
        row = db.execute("SELECT value FROM gallery_meta WHERE key = 'encryption'").fetchone()
        return json.loads(row[0]) if row else None

    def _create_keys_database(self) -> None:
        from psycopg import sql

        name = _db_name(self.keys_url)
        try:
            self._db().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except self._psycopg.errors.DuplicateDatabase:
            return
        except self._psycopg.Error as exc:
            raise GalleryError("gallery.keys_unavailable", f"the key database {name!r} cannot be reached nor "
                               f"created ({type(exc).__name__}); create it or set gallery.keys_url") from exc

    @property
    def encrypted(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(5)
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()

    # -- data keys -----------------------------------------------------------------------
    def _dek(self, kid: str) -> DataKey:
        dek = self._deks.get(kid)
        if dek is None:
            row = self._kdb().execute("SELECT wrapped FROM subject_keys WHERE kid = %s", (kid,)).fetchone()
            if row is None:
                raise GalleryError("gallery.key_erased", "a subject's data key no longer exists (erased)")
            dek = self._deks[kid] = self._keys.unwrap(kid, row[0])
        return dek

    def _deks_for(self, kids: set[str]) -> dict[str, DataKey]:
        """Many data keys in one round trip (a full load); erased ones are absent."""
        missing = [k for k in kids if k not in self._deks]
        if missing:
            for kid, wrapped in self._kdb().execute("SELECT kid, wrapped FROM subject_keys WHERE kid = ANY(%s)",
                                                    (missing,)).fetchall():
                self._deks[kid] = self._keys.unwrap(kid, wrapped)
        return {k: self._deks[k] for k in kids if k in self._deks}

    def _new_key(self) -> DataKey:
        dek, wrapped = self._keys.new_data_key()
        self._kdb().execute("INSERT INTO subject_keys(kid, wrapped, created) VALUES (%s, %s, %s)",
                            (dek.kid, wrapped, time.time()))
        self._deks[dek.kid] = dek
        return dek

    def _destroy_key(self, kid: str) -> None:
        self._kdb().execute("DELETE FROM subject_keys WHERE kid = %s", (kid,))
        self._deks.pop(kid, None)

    @staticmethod
    def _bump(db, event: dict[str, Any]) -> int:
        """Next generation (the row lock orders writers: generation order = commit order),
        announced to every listener at commit."""
        (gen,) = db.execute("UPDATE gallery_generation SET gen = gen + 1 WHERE id = 1 RETURNING gen").fetchone()
        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps({**event, "g": gen})))
        return gen

    # -- writing ---------------------------------------------------------------------------
    def _write_subject(self, subject: str, name: str | None, consent: str | None, retain_until: float | None,
                       body) -> Any:
        """Runs ``body(db, dek)`` in a transaction holding the subject's row lock, creating
        the subject (and its data key) when needed; retries when another host created or
        erased the subject meanwhile."""
        with self._errors():
            for _ in range(20):
                db = self._db()
                row = db.execute("SELECT key_id FROM subjects WHERE id = %s", (subject,)).fetchone()
                fresh = self._new_key() if row is None else None
                try:
                    dek = fresh or self._dek(row[0])
                    with db.transaction():
                        inserted = False
                        if fresh is not None:
                            inserted = db.execute(
                                "INSERT INTO subjects(id, key_id, name, consent, created, retain_until) "
                                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                                (subject, dek.kid, self._keys.seal_text(name, name_aad(subject), dek),
                                 self._keys.seal_text(consent, consent_aad(subject), dek), time.time(),
                                 retain_until)).rowcount == 1
                        locked = db.execute("SELECT key_id FROM subjects WHERE id = %s FOR UPDATE",
                                            (subject,)).fetchone()
                        if locked is None or locked[0] != dek.kid:
                            raise _Retry
                        if not inserted:
                            self._update_fields(db, subject, dek, name, consent, retain_until)
                        return body(db, dek)
                except _Retry:
                    if fresh is not None:
                        self._destroy_key(fresh.kid)
                    continue
                except GalleryError as exc:
                    if exc.code == "gallery.key_erased":  # erased between our read and our lock
                        self._deks.pop(row[0], None)
                        continue
                    raise
            raise GalleryError("gallery.busy", "the subject kept changing under this write; try again",
                               retryable=True)

    def _update_fields(self, db, subject: str, dek: DataKey, name: str | None, consent: str | None,
                       retain_until: float | None) -> None:
        if name is not None:
            db.execute("UPDATE subjects SET name = %s WHERE id = %s",
                       (self._keys.seal_text(name, name_aad(subject), dek), subject))
        if consent is not None:
            db.execute("UPDATE subjects SET consent = %s WHERE id = %s",
                       (self._keys.seal_text(consent, consent_aad(subject), dek), subject))
        if retain_until is not None:
            db.execute("UPDATE subjects SET retain_until = %s WHERE id = %s", (retain_until, subject))

    def upsert_subject(self, subject: str, *, name: str | None = None, consent: str | None = None,
                       retain_until: float | None = None) -> None:
        gen = self._write_subject(subject, name, consent, retain_until, lambda db, dek: self._bump(db, {"op": "subj"}))
        self._index.note_generation(gen)

    def add_embedding(self, subject: str, backend: str, vector: np.ndarray, *, photo_sha256: str,
                      source_key: str | None = None, name: str | None = None, consent: str | None = None,
                      retain_until: float | None = None) -> bool:
        vec = check_vector(vector)

        def insert(db, dek: DataKey) -> tuple[int | None, int]:
            exists = db.execute("SELECT 1 FROM embeddings WHERE subject = %s AND backend = %s AND photo_sha256 = %s",
                                (subject, backend, photo_sha256)).fetchone()
            if exists:
                return None, -1
            gen = self._bump(db, {"op": "add"})  # the id is not known yet: listeners look it up by gen
            (emb_id,) = db.execute(
                "INSERT INTO embeddings(subject, backend, dim, vector, photo_sha256, source_key, created, gen) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (subject, backend, vec.size, self._keys.seal(vec.tobytes(), vec_aad(subject, backend, photo_sha256),
                                                             dek),
                 photo_sha256, self._keys.seal_text(source_key, key_aad(subject, photo_sha256), dek), time.time(),
                 gen)).fetchone()
            return emb_id, gen

        emb_id, gen = self._retry_unique(lambda: self._write_subject(subject, name, consent, retain_until, insert))
        added = emb_id is not None
        if added and self._index.loaded:
            self._index.add(Row(emb_id, subject, backend, gen, vec))
        log.info("gallery.embedding_added" if added else "gallery.embedding_exists", backend=backend)
        return added

    def _retry_unique(self, fn):
        """Two hosts adding the same photo at once: the loser's insert violates the unique
        key after the winner commits; the retry then sees the row and adds nothing."""
        for _ in range(3):
            try:
                return fn()
            except self._psycopg.errors.UniqueViolation:
                continue
        return fn()

    def delete(self, subject: str) -> int:
        n, _ = self._delete(subject)
        self._vacuum_keys()
        log.info("gallery.subject_deleted", embeddings=n)
        return n

    def _delete(self, subject: str, expired_at: float | None = None) -> tuple[int, int]:
        with self._errors():
            db = self._db()
            with db.transaction():
                row = db.execute("SELECT key_id, retain_until FROM subjects WHERE id = %s FOR UPDATE",
                                 (subject,)).fetchone()
                if row is None or (expired_at is not None and (row[1] is None or row[1] > expired_at)):
                    raise unknown_subject(subject)
                # The data key first, committed on its own: from here the rows are ciphertext
                # without a key, wherever a copy of them lives.
                self._destroy_key(row[0])
                n = db.execute("DELETE FROM embeddings WHERE subject = %s", (subject,)).rowcount
                db.execute("DELETE FROM subjects WHERE id = %s", (subject,))
                gen = self._bump(db, {"op": "del", "s": subject, "k": row[0]})
        self._index.remove_subject(subject, gen)
        return n, gen

    def _vacuum_keys(self) -> None:
        """Rewrites the (small) key table so the deleted key's dead tuple is not kept in it."""
        with self._errors(), contextlib.suppress(self._psycopg.Error):
            self._kdb().execute("VACUUM FULL subject_keys")

    def purge_expired(self, now: float) -> list[str]:
        with self._errors():
            rows = self._db().execute("SELECT id FROM subjects WHERE retain_until IS NOT NULL AND retain_until <= %s "
                                      "ORDER BY id", (now,)).fetchall()
        purged = []
        for (subject,) in rows:
            try:
                self._delete(subject, expired_at=now)
                purged.append(subject)
            except GalleryError as exc:
                if exc.code != "gallery.unknown_subject":
                    # Report what is erased so far: each one needs its tombstone.
                    log.warning("gallery.purge_interrupted", error=exc.code, purged=len(purged))
                    break
                # another host purged it first (it writes the tombstone), or its retention
                # was extended meanwhile
        if purged:
            self._vacuum_keys()
            log.info("gallery.purged", subjects=len(purged))
        return purged

    # -- reading ---------------------------------------------------------------------------
    def subjects(self) -> list[dict[str, Any]]:
        with self._errors():
            db = self._db()
            rows = db.execute("SELECT id, key_id, name, consent, created, retain_until FROM subjects "
                              "ORDER BY id").fetchall()
            counts: dict[str, dict[str, int]] = {}
            for sid, backend, n in db.execute("SELECT subject, backend, COUNT(*) FROM embeddings "
                                              "GROUP BY subject, backend").fetchall():
                counts.setdefault(sid, {})[backend] = n
            deks = self._deks_for({r[1] for r in rows})
        out = []
        for sid, kid, name, consent, created, retain in rows:
            dek = deks.get(kid)
            if dek is None:
                continue  # its key was destroyed: erased, its rows are going
            out.append({"id": sid, "name": self._keys.open_text(name, name_aad(sid), dek),
                        "consent": self._keys.open_text(consent, consent_aad(sid), dek), "created": created,
                        "retain_until": retain, "embeddings": counts.get(sid, {})})
        return out

    def export(self, subject: str) -> dict[str, Any]:
        with self._errors():
            db = self._db()
            row = db.execute("SELECT key_id, name, consent, created, retain_until FROM subjects WHERE id = %s",
                             (subject,)).fetchone()
            if row is None:
                raise unknown_subject(subject)
            kid, name, consent, created, retain = row
            dek = self._dek(kid)
            rows = db.execute("SELECT backend, dim, vector, photo_sha256, source_key, created FROM embeddings "
                              "WHERE subject = %s ORDER BY id", (subject,)).fetchall()
        embs = []
        for backend, dim, blob, sha, key, e_created in rows:
            vec = np.frombuffer(self._keys.open(blob, vec_aad(subject, backend, sha), dek), dtype=np.float32)
            embs.append({"backend": backend, "dim": dim, "photo_sha256": sha,
                         "source_key": self._keys.open_text(key, key_aad(subject, sha), dek), "created": e_created,
                         "vector": [float(x) for x in vec]})
        return {"subject": {"id": subject, "name": self._keys.open_text(name, name_aad(subject), dek),
                            "consent": self._keys.open_text(consent, consent_aad(subject), dek),
                            "created": created, "retain_until": retain},
                "embeddings": embs, "encrypted_at_rest": True}

    def count(self, backend: str | None = None) -> int:
        with self._errors():
            if backend is None:
                return self._db().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            return self._db().execute("SELECT COUNT(*) FROM embeddings WHERE backend = %s",
                                      (backend,)).fetchone()[0]

    # -- the index -------------------------------------------------------------------------
    def _rows(self, data: list[tuple]) -> list[Row]:
        deks = self._deks_for({r[6] for r in data})
        rows = []
        for emb_id, subject, backend, blob, sha, gen, kid in data:
            dek = deks.get(kid)
            if dek is None:
                continue  # erased while we read
            vec = np.frombuffer(self._keys.open(blob, vec_aad(subject, backend, sha), dek), dtype=np.float32)
            rows.append(Row(emb_id, subject, backend, gen, vec))
        return rows

    def _reload(self, db) -> None:
        """A full load, from one snapshot: the generation and the rows it covers."""
        with self._load_lock:
            with db.transaction():
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                (gen,) = db.execute("SELECT gen FROM gallery_generation WHERE id = 1").fetchone()
                data = db.cursor(binary=True).execute(_ROWS).fetchall()
            rows = self._rows(data)
            self._index.replace(rows, gen)
            self._synced = gen
        log.info("gallery.index_loaded", embeddings=len(rows), generation=gen)

    def _apply(self, db, events: list[dict[str, Any]]) -> None:
        """Applies notified changes in generation order; skips what the last load saw."""
        events = sorted((e for e in events if e["g"] > self._synced), key=lambda e: e["g"])
        if not events:
            return
        adds = [e["g"] for e in events if e["op"] == "add"]
        fetched: dict[int, Row] = {}
        if adds:
            data = db.cursor(binary=True).execute(_ROWS + " WHERE e.gen = ANY(%s)", (adds,)).fetchall()
            fetched = {r.gen: r for r in self._rows(data)}
        for e in events:
            if e["op"] == "add" and e["g"] in fetched:
                self._index.add(fetched[e["g"]])
            elif e["op"] == "del":
                self._deks.pop(e["k"], None)
                self._index.remove_subject(e["s"], e["g"])
            else:
                self._index.note_generation(e["g"])
        self._synced = events[-1]["g"]

    def _listen(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect(self.url, "facewarden-gallery-listener")
                conn.execute(f"LISTEN {CHANNEL}")
                started = time.monotonic()
                self._reload(conn)  # after LISTEN: nothing between the load and the stream is lost
                self._alive = started
                self._ready.set()
                checked = time.monotonic()
                while not self._stop.is_set():
                    # ``_alive`` = a time before which every change committed (and delivered,
                    # a few ms) is applied: set only once what arrived since is applied too.
                    turn = time.monotonic()
                    events = [json.loads(n.payload) for n in conn.notifies(timeout=0.2, stop_after=1)]
                    if events:
                        events += [json.loads(n.payload) for n in conn.notifies(timeout=0.005)]
                        self._apply(conn, events)
                    if time.monotonic() - checked > self.refresh_interval:
                        self._check(conn)
                        checked = time.monotonic()
                    self._alive = turn
            except Exception as exc:  # noqa: BLE001 - the listener must outlive a broken connection
                self._alive = 0.0
                log.warning("gallery.listener_error", error=type(exc).__name__)
                self._stop.wait(1.0)
            finally:
                self._alive = 0.0
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _check(self, conn) -> None:
        """The periodic full check: the counter against what was applied; a gap that the
        notifications in flight do not close within a second means a reload."""
        (gen,) = conn.execute("SELECT gen FROM gallery_generation WHERE id = 1").fetchone()
        deadline = time.monotonic() + 1.0
        while self._synced < gen and time.monotonic() < deadline:
            events = [json.loads(n.payload) for n in conn.notifies(timeout=0.1)]
            self._apply(conn, events)
        if self._synced < gen:
            log.warning("gallery.index_gap", applied=self._synced, current=gen)
            self._reload(conn)

    def _fresh_index(self) -> VectorIndex:
        if self._listener is None:
            with self._start_lock:
                if self._listener is None:
                    self._listener = threading.Thread(target=self._listen, name="gallery-listener", daemon=True)
                    self._listener.start()
            self._ready.wait(30)
        if time.monotonic() - self._alive <= STALE_AFTER:
            return self._index
        # The listener is late or down: fail closed. Read the counter; give a slow listener
        # a moment to reach it (a busy CPU), else load everything.
        with self._errors():
            db = self._db()
            (gen,) = db.execute("SELECT gen FROM gallery_generation WHERE id = 1").fetchone()
            deadline = time.monotonic() + CATCH_UP
            while self._synced < gen and time.monotonic() < deadline and self._listener.is_alive():
                time.sleep(0.005)
            if self._synced < gen:
                self._reload(db)
        return self._index

    def nearest(self, backend: str, vectors: np.ndarray, *, k: int = 1,
                exclude: str | None = None) -> list[list[Match]]:
        return self._fresh_index().search(backend, vectors, k=k, exclude=exclude)


def read_password_file(path: Path) -> str:
    try:
        return Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise GalleryError("gallery.password_unreadable", f"cannot read a password from {path}") from exc
