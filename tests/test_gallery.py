"""The gallery: nearest-subject search, idempotent adds, erasure down to the file bytes,
export, encryption at rest, retention. Random unit vectors stand in for embeddings here
(the store does not care where they came from; tests/test_enroll.py uses real ones)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from facewarden.storage.gallery import GalleryError, SqliteGallery as Gallery, generate_key_file, open_gallery, read_key_file


def _unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _raw_bytes(state: Path) -> bytes:
    """Every byte SQLite keeps for the gallery: the database and its WAL/journal files."""
    return b"".join(p.read_bytes() for p in sorted(state.glob("gallery.db*")) if p.is_file())


@pytest.fixture
def filled(tmp: Path) -> tuple[Gallery, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    g = Gallery(tmp / "state")
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


def test_add_is_idempotent_per_photo_subject_and_backend(filled) -> None:
    g, vecs = filled
    n = g.count()
    assert g.add_embedding("s00", "dlib-resnet-v1", vecs["s00"][0], photo_sha256="000" * 8) is False
    assert g.count() == n
    assert g.add_embedding("s00", "facenet-20180408", np.ones(512, np.float32), photo_sha256="000" * 8) is True
    assert g.count() == n + 1


def test_delete_leaves_no_embedding_bytes_in_the_database_files(filled, tmp: Path) -> None:
    g, vecs = filled
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


def test_export_returns_exactly_what_is_stored(filled, tmp: Path) -> None:
    g, vecs = filled
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


def test_purge_expired_removes_only_subjects_past_retention(tmp: Path) -> None:
    g = Gallery(tmp / "state")
    v = _unit(np.random.default_rng(4), 3)
    g.add_embedding("old", "dlib-resnet-v1", v[0], photo_sha256="1" * 64, retain_until=100.0)
    g.add_embedding("new", "dlib-resnet-v1", v[1], photo_sha256="2" * 64, retain_until=10_000.0)
    g.add_embedding("keep", "dlib-resnet-v1", v[2], photo_sha256="3" * 64)
    assert g.purge_expired(5_000.0) == ["old"]
    assert sorted(s["id"] for s in g.subjects()) == ["keep", "new"]
    assert v[0].tobytes() not in _raw_bytes(tmp / "state")


def test_threads_share_one_gallery_and_see_each_others_writes(tmp: Path) -> None:
    g = Gallery(tmp / "state")
    v = _unit(np.random.default_rng(5), 8)
    assert g.nearest("dlib-resnet-v1", v[0]) == [[]]  # caches the empty matrix
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
    # Another process's view (a second object on the same file) sees them too.
    assert Gallery(tmp / "state").count() == 8
