"""The gallery: nearest-subject search, idempotent adds, erasure, export, encryption at
rest, retention, concurrent writers. Random unit vectors stand in for embeddings here (the
store does not care where they came from; tests/test_enroll.py uses real ones).

The behavioural tests run against every backend (``backend`` fixture: SQLite plain, SQLite
with a key, PostgreSQL on the real server); a second gallery object on the same place
stands for another process or host. The file-byte tests below them are SQLite's own;
PostgreSQL's erasure (crypto-shredding, dumps) is in tests/test_gallery_postgres.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import fixtures_pg
import numpy as np
import pytest

from facewarden.storage.gallery import GalleryError, generate_key_file, open_gallery, read_key_file
from facewarden.storage.gallery import SqliteGallery as Gallery

pg_gallery_urls = fixtures_pg.pg_gallery_urls
wait_until = fixtures_pg.wait_until
BACKENDS = ["sqlite", "sqlite-keyed", pytest.param("postgres", marks=pytest.mark.postgres)]


def _unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _raw_bytes(state: Path) -> bytes:
    """Every byte SQLite keeps for the gallery: the database and its WAL/journal files."""
    return b"".join(p.read_bytes() for p in sorted(state.glob("gallery.db*")) if p.is_file())


class Place:
    """Where a backend's gallery lives; ``open()`` gives a new object on it (another
    process or host), ``open(other_key)`` tries another key."""

    def __init__(self, kind: str, tmp: Path, request: pytest.FixtureRequest):
        self.kind = kind
        self.key = secrets_key() if kind != "sqlite" else None
        self.opened: list = []
        if kind == "postgres":
            self.db = request.getfixturevalue("pg_gallery_urls")
        self.state = tmp / "state"

    def open(self, key: bytes | str | None = "default"):
        key = self.key if key == "default" else key
        if self.kind == "postgres":
            from facewarden.storage.gallery.postgres import PostgresGallery

            g = PostgresGallery(self.db.url, key, keys_url=self.db.keys_url)
        else:
            g = Gallery(self.state, key)
        self.opened.append(g)
        return g

    def close(self) -> None:
        for g in self.opened:
            g.close()


def secrets_key() -> bytes:
    import secrets

    return secrets.token_bytes(32)


@pytest.fixture(params=BACKENDS)
def place(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Place]:
    p = Place(request.param, tmp, request)
    yield p
    p.close()


@pytest.fixture
def filled(place: Place) -> tuple:
    rng = np.random.default_rng(7)
    g = place.open()
    vecs = {}
    for i in range(20):
        v = _unit(rng, 3)
        vecs[f"s{i:02d}"] = v
        for j, row in enumerate(v):
            g.add_embedding(f"s{i:02d}", "dlib-resnet-v1", row, photo_sha256=f"{i:02d}{j}" * 8)
    return g, vecs


def test_nearest_subject_is_the_one_with_the_nearest_embedding(filled) -> None:
    g, vecs = filled
    rng = np.random.default_rng(1)
    queries = _unit(rng, 10)
    got = g.nearest("dlib-resnet-v1", queries, k=3)
    for q, matches in zip(queries, got, strict=True):
        brute = sorted((float(np.min(np.linalg.norm(v - q, axis=1))), s) for s, v in vecs.items())
        assert [m.subject for m in matches] == [s for _, s in brute[:3]]
        assert [round(m.distance, 4) for m in matches] == [round(d, 4) for d, _ in brute[:3]]
    # An enrolled vector finds its own subject at distance ~0; exclude skips that subject.
    assert g.nearest("dlib-resnet-v1", vecs["s05"][1])[0][0].subject == "s05"
    assert g.nearest("dlib-resnet-v1", vecs["s05"][1], exclude="s05")[0][0].subject != "s05"
    assert g.nearest("facenet-20180408", queries[:2]) == [[], []]  # another backend: empty
    # k larger than the number of subjects: every subject once, nearest first.
    everyone = g.nearest("dlib-resnet-v1", queries[0], k=50)[0]
    assert sorted(m.subject for m in everyone) == sorted(vecs)
    assert [m.distance for m in everyone] == sorted(m.distance for m in everyone)


def test_add_is_idempotent_per_photo_subject_and_backend(filled) -> None:
    g, vecs = filled
    n = g.count()
    assert g.add_embedding("s00", "dlib-resnet-v1", vecs["s00"][0], photo_sha256="000" * 8) is False
    assert g.count() == n
    assert g.add_embedding("s00", "facenet-20180408", np.ones(512, np.float32), photo_sha256="000" * 8) is True
    assert g.count() == n + 1 and g.count("facenet-20180408") == 1
    with pytest.raises(GalleryError) as exc:
        g.add_embedding("s00", "dlib-resnet-v1", np.full(128, np.nan, np.float32), photo_sha256="f" * 64)
    assert exc.value.code == "gallery.bad_vector"


def test_export_returns_exactly_what_was_stored(filled, place: Place) -> None:
    g, vecs = filled
    g.upsert_subject("s07", name="Seven", consent="form 2026-11-21", retain_until=2e9)
    g.add_embedding("s07", "dlib-resnet-v1", vecs["s07"][0], photo_sha256="070" * 8, source_key="enroll/s07/a.jpg")
    data = place.open().export("s07")  # read back by another process/host
    assert data["subject"]["id"] == "s07" and data["subject"]["name"] == "Seven"
    assert data["subject"]["consent"] == "form 2026-11-21" and data["subject"]["retain_until"] == 2e9
    got = np.asarray([e["vector"] for e in data["embeddings"]], np.float32)
    assert np.array_equal(got, vecs["s07"])  # bit-exact float32 round trip, in enrolment order
    assert [e["photo_sha256"] for e in data["embeddings"]] == [f"07{j}" * 8 for j in range(3)]
    assert data["encrypted_at_rest"] is (place.kind != "sqlite")
    listed = {s["id"]: s for s in g.subjects()}
    assert listed["s07"]["name"] == "Seven" and listed["s07"]["embeddings"] == {"dlib-resnet-v1": 3}
    with pytest.raises(GalleryError) as exc:
        g.export("nobody")
    assert exc.value.code == "gallery.unknown_subject"


def test_delete_erases_the_subject_for_every_reader(filled, place: Place) -> None:
    g, vecs = filled
    other = place.open()  # another process or host, with its index loaded before the erasure
    assert other.nearest("dlib-resnet-v1", vecs["s03"][0])[0][0].subject == "s03"
    assert g.delete("s03") == 3
    for reader in (g, other):
        wait_until(lambda r=reader: all(m[0].subject != "s03" for m in r.nearest("dlib-resnet-v1", vecs["s03"])),
                   1.0)
        assert "s03" not in [s["id"] for s in reader.subjects()]
    assert other.nearest("dlib-resnet-v1", vecs["s04"][0])[0][0].subject == "s04"  # others untouched
    with pytest.raises(GalleryError) as exc:
        other.delete("s03")
    assert exc.value.code == "gallery.unknown_subject"
    # The same id enrolled again is a new subject: the old erasure does not touch it.
    g.add_embedding("s03", "dlib-resnet-v1", vecs["s03"][0], photo_sha256="new" * 8)
    wait_until(lambda: other.nearest("dlib-resnet-v1", vecs["s03"][0])[0][0].subject == "s03", 1.0)
    assert len(other.export("s03")["embeddings"]) == 1


def test_wrong_or_missing_key_is_refused(filled, place: Place) -> None:
    if place.kind == "sqlite":
        with pytest.raises(GalleryError) as exc:
            place.open(secrets_key())
        assert exc.value.code == "gallery.not_encrypted"
        return
    for key, code in ((None, "gallery.locked" if place.kind == "sqlite-keyed" else "gallery.key_required"),
                      (secrets_key(), "gallery.key_invalid")):
        with pytest.raises(GalleryError) as exc:
            place.open(key)
        assert exc.value.code == code


def test_purge_expired_removes_only_subjects_past_retention_once_across_hosts(place: Place) -> None:
    g, h = place.open(), place.open()
    v = _unit(np.random.default_rng(4), 23)
    g.add_embedding("new", "dlib-resnet-v1", v[1], photo_sha256="2" * 64, retain_until=10_000.0)
    g.add_embedding("keep", "dlib-resnet-v1", v[2], photo_sha256="3" * 64)
    for i in range(20):
        g.add_embedding(f"old{i:02d}", "dlib-resnet-v1", v[3 + i], photo_sha256=f"{i:02d}" * 32, retain_until=100.0)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda x=x: results.append(x.purge_expired(5_000.0))) for x in (g, h)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One purge wins per subject: together the hosts report each expired subject once.
    assert sorted(results[0] + results[1]) == [f"old{i:02d}" for i in range(20)]
    assert sorted(s["id"] for s in h.subjects()) == ["keep", "new"]
    assert g.purge_expired(5_000.0) == []


def test_concurrent_enrolments_from_two_hosts_are_neither_lost_doubled_nor_misattributed(place: Place) -> None:
    hosts = [place.open(), place.open()]
    rng = np.random.default_rng(5)
    n_per_host, n_subjects = 60, 7
    vecs = _unit(rng, 2 * n_per_host)
    assert hosts[1].nearest("dlib-resnet-v1", vecs[0]) == [[]]  # index loaded before the writes
    errors: list[Exception] = []

    def enrol(h: int) -> None:
        for i in range(h * n_per_host, (h + 1) * n_per_host):
            try:
                # Both hosts write the same subjects, and each photo twice (a retried job).
                for _ in range(2):
                    hosts[h].add_embedding(f"p{i % n_subjects}", "dlib-resnet-v1", vecs[i], photo_sha256=f"{i:064x}")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=enrol, args=(h,)) for h in (0, 1) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reader = place.open()
    assert reader.count() == 2 * n_per_host
    for s in range(n_subjects):
        got = {e["photo_sha256"]: e["vector"] for e in reader.export(f"p{s}")["embeddings"]}
        want = {f"{i:064x}": vecs[i].tolist() for i in range(2 * n_per_host) if i % n_subjects == s}
        assert got.keys() == want.keys()
        assert all(np.array_equal(np.float32(got[k]), np.float32(want[k])) for k in want)
    for host in hosts:  # every host's index has every vector, under the right subject
        wait_until(lambda x=host: [m[0].subject for m in x.nearest("dlib-resnet-v1", vecs)]
                   == [f"p{i % n_subjects}" for i in range(2 * n_per_host)], 2.0)


def test_threads_share_one_gallery_and_see_each_others_writes(place: Place) -> None:
    g = place.open()
    v = _unit(np.random.default_rng(5), 8)
    assert g.nearest("dlib-resnet-v1", v[0]) == [[]]  # caches the empty index
    errors = []

    def add(i: int) -> None:
        try:
            g.add_embedding(f"t{i}", "dlib-resnet-v1", v[i], photo_sha256=f"{i}" * 64)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [m[0].subject for m in g.nearest("dlib-resnet-v1", v)] == [f"t{i}" for i in range(8)]
    assert place.open().count() == 8


# -- SQLite's own erasure and encryption: what is in the files ---------------------------------


@pytest.fixture
def sqlite_filled(tmp: Path) -> tuple[Gallery, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    g = Gallery(tmp / "state")
    vecs = {}
    for i in range(20):
        v = _unit(rng, 3)
        vecs[f"s{i:02d}"] = v
        for j, row in enumerate(v):
            g.add_embedding(f"s{i:02d}", "dlib-resnet-v1", row, photo_sha256=f"{i:02d}{j}" * 8)
    return g, vecs


def test_delete_leaves_no_embedding_bytes_in_the_database_files(sqlite_filled, tmp: Path) -> None:
    g, vecs = sqlite_filled
    state = tmp / "state"
    before = _raw_bytes(state)
    target = vecs["s03"]
    assert all(row.tobytes() in before for row in target)  # the search below can find them
    assert g.delete("s03") == 3
    after = _raw_bytes(state)
    for row in target:
        blob = row.tobytes()
        # Not the whole vector, nor any 16-byte window of it (4 floats), anywhere.
        assert not any(blob[i:i + 16] in after for i in range(0, len(blob) - 16, 4))
    assert b"s03" not in after and b"030" * 8 not in after  # id and photo references gone too
    assert vecs["s04"][0].tobytes() in after  # others are untouched
    assert [s["id"] for s in g.subjects()].count("s03") == 0
    with pytest.raises(GalleryError) as exc:
        g.delete("s03")
    assert exc.value.code == "gallery.unknown_subject"


def test_sqlite_export_matches_the_rows_in_the_file(sqlite_filled, tmp: Path) -> None:
    g, vecs = sqlite_filled
    g.upsert_subject("s07", name="Seven", consent="form 2026-11-21", retain_until=2e9)
    data = g.export("s07")
    assert data["subject"]["id"] == "s07" and data["subject"]["name"] == "Seven"
    assert data["subject"]["consent"] == "form 2026-11-21" and data["subject"]["retain_until"] == 2e9
    got = np.asarray([e["vector"] for e in data["embeddings"]], np.float32)
    assert np.array_equal(got, vecs["s07"])  # bit-exact float32 round trip
    conn = sqlite3.connect(tmp / "state" / "gallery.db")
    rows = conn.execute("SELECT backend, photo_sha256, vector FROM embeddings WHERE subject='s07' "
                        "ORDER BY id").fetchall()
    assert [(e["backend"], e["photo_sha256"]) for e in data["embeddings"]] == [(b, s) for b, s, _ in rows]
    assert [np.frombuffer(v, np.float32).tolist() for *_, v in rows] == [e["vector"] for e in data["embeddings"]]


def test_encrypted_gallery_cannot_be_read_without_its_key(tmp: Path) -> None:
    state = tmp / "state"
    key, other = tmp / "k1", tmp / "k2"
    generate_key_file(key)
    generate_key_file(other)
    v = _unit(np.random.default_rng(3), 2)
    g = open_gallery(state, key)
    g.add_embedding("alice", "dlib-resnet-v1", v[0], photo_sha256="a" * 64, name="Alice Liddell-Xyzzy",
                    source_key="enroll/alice/1.jpg")
    raw = _raw_bytes(state)
    assert v[0].tobytes()[:16] not in raw and b"Liddell-Xyzzy" not in raw and b"enroll/alice/1.jpg" not in raw
    for k, code in ((None, "gallery.locked"), (other, "gallery.key_invalid")):
        with pytest.raises(GalleryError) as exc:
            open_gallery(state, k)
        assert exc.value.code == code
    again = Gallery(state, read_key_file(key))
    assert again.export("alice")["subject"]["name"] == "Alice Liddell-Xyzzy"
    assert again.nearest("dlib-resnet-v1", v[0])[0][0].subject == "alice"
    # A plain gallery refuses a key: mixing would leave plaintext beside sealed rows.
    plain = Gallery(tmp / "plain")
    plain.add_embedding("bob", "dlib-resnet-v1", v[1], photo_sha256="b" * 64)
    with pytest.raises(GalleryError) as exc:
        open_gallery(tmp / "plain", key)
    assert exc.value.code == "gallery.not_encrypted"


def test_keyed_sqlite_erasure_removes_the_subjects_data_key_from_the_files(tmp: Path) -> None:
    key = secrets_key()
    g = Gallery(tmp / "state", key)
    v = _unit(np.random.default_rng(8), 2)
    g.add_embedding("alice", "dlib-resnet-v1", v[0], photo_sha256="a" * 64, name="Alice")
    g.add_embedding("bob", "dlib-resnet-v1", v[1], photo_sha256="b" * 64, name="Bob")
    conn = sqlite3.connect(tmp / "state" / "gallery.db")
    ((kid, wrapped),) = conn.execute("SELECT k.kid, k.wrapped FROM subject_keys k JOIN subjects s ON s.key_id = k.kid "
                                     "WHERE s.id = 'alice'").fetchall()
    (blob,) = conn.execute("SELECT vector FROM embeddings WHERE subject = 'alice'").fetchone()
    conn.close()
    assert wrapped in _raw_bytes(tmp / "state") and kid.encode() in _raw_bytes(tmp / "state")
    g.delete("alice")
    after = _raw_bytes(tmp / "state")
    assert wrapped not in after and kid.encode() not in after and bytes(blob)[:32] not in after
    assert Gallery(tmp / "state", key).export("bob")["subject"]["name"] == "Bob"


def test_values_sealed_by_the_gallery_key_itself_still_open(tmp: Path) -> None:
    """Galleries written before per-subject data keys: no key_id, values sealed by the
    gallery key directly (FWG1). They read, search and erase as before."""
    from facewarden.storage.gallery.sealing import Keyring

    key = secrets_key()
    (tmp / "state").mkdir()
    old_db = sqlite3.connect(tmp / "state" / "gallery.db")  # the schema before data keys
    old_db.executescript("CREATE TABLE subjects (id TEXT PRIMARY KEY, name BLOB, consent BLOB, created REAL NOT NULL,"
                         " retain_until REAL);")
    old_db.close()
    g = Gallery(tmp / "state", key)
    ring = Keyring(key)
    v = _unit(np.random.default_rng(9), 1)[0]
    conn = g._db()
    conn.execute("INSERT INTO subjects(id, name, consent, created, retain_until, key_id) VALUES (?,?,?,?,?,NULL)",
                 ("old", ring.seal_text("Old Timer", "name|old", None), None, 1.0, None))
    conn.execute("INSERT INTO embeddings(subject, backend, dim, vector, photo_sha256, source_key, created) "
                 "VALUES (?,?,?,?,?,?,?)", ("old", "dlib-resnet-v1", 128,
                                            ring.seal(v.tobytes(), f"vec|old|dlib-resnet-v1|{'o' * 64}", None),
                                            "o" * 64, None, 1.0))
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'generation'")
    conn.commit()
    assert g.export("old")["subject"]["name"] == "Old Timer"
    assert g.nearest("dlib-resnet-v1", v)[0][0].subject == "old"
    g.add_embedding("old", "dlib-resnet-v1", -v, photo_sha256="p" * 64)  # still sealed the old way
    assert len(g.export("old")["embeddings"]) == 2
    assert g.delete("old") == 2
