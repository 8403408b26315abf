"""PostgreSQL gallery only: crypto-shredding down to a dump taken before the erasure, and
searches that honour an erasure within 1 s even when the listener's connection is cut.
Real server on 127.0.0.1:5432; each test creates and drops its own databases."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import fixtures_pg
import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError

from facewarden.config.schema import Settings
from facewarden.storage.gallery import GalleryError, open_configured
from facewarden.storage.gallery.postgres import PostgresGallery
from facewarden.storage.gallery.sealing import Keyring

pytestmark = pytest.mark.postgres
pg_gallery_urls = fixtures_pg.pg_gallery_urls
wait_until = fixtures_pg.wait_until
NAME = "Alice Liddell-Xyzzy"


def _psql(*args: str) -> None:
    subprocess.run(["psql", "-h", fixtures_pg.HOST, "-U", "postgres", "-q", "-v", "ON_ERROR_STOP=1", *args],
                   check=True, stdout=subprocess.DEVNULL)


def test_a_dump_from_before_an_erasure_cannot_be_decrypted_for_that_subject(pg_gallery_urls, tmp: Path) -> None:
    db = pg_gallery_urls
    key = secrets.token_bytes(32)
    rng = np.random.default_rng(11)
    alice, bob = rng.standard_normal((2, 2, 128)).astype(np.float32)
    g = PostgresGallery(db.url, key, keys_url=db.keys_url)
    for j in range(2):
        g.add_embedding("alice", "dlib-resnet-v1", alice[j], photo_sha256=f"a{j}" * 32, name=NAME,
                        consent="form 17", source_key=f"enroll/alice/{j}.jpg")
        g.add_embedding("bob", "dlib-resnet-v1", bob[j], photo_sha256=f"b{j}" * 32, name="Bob")
    dump = tmp / "gallery.sql"
    subprocess.run(["pg_dump", "-h", fixtures_pg.HOST, "-U", "postgres", "-f", str(dump), db.name], check=True)
    raw = dump.read_bytes()
    assert alice[0].tobytes()[:16] not in raw and NAME.encode() not in raw  # sealed even in the dump
    assert g.delete("alice") == 2
    g.close()

    restored = f"{db.name}_restored"
    fixtures_pg.create_databases(restored)
    try:
        _psql("-d", restored, "-f", str(dump))
        import psycopg

        with psycopg.connect(f"postgresql://postgres@{fixtures_pg.HOST}:{fixtures_pg.PORT}/{restored}") as conn:
            sealed = conn.execute("SELECT e.vector, s.name, s.consent, e.source_key, e.subject, e.photo_sha256 "
                                  "FROM embeddings e JOIN subjects s ON s.id = e.subject "
                                  "WHERE e.subject = 'alice'").fetchall()
        assert len(sealed) == 2  # the dump does hold alice's rows...
        # ...and the replay, opened with today's gallery key and today's key database,
        # reads bob but nothing of alice.
        replay = PostgresGallery(f"postgresql://postgres@{fixtures_pg.HOST}:{fixtures_pg.PORT}/{restored}", key,
                                 keys_url=db.keys_url)
        try:
            assert [s["id"] for s in replay.subjects()] == ["bob"]
            assert replay.export("bob")["subject"]["name"] == "Bob"
            with pytest.raises(GalleryError) as exc:
                replay.export("alice")
            assert exc.value.code == "gallery.key_erased"
            assert all(m[0].subject == "bob" for m in replay.nearest("dlib-resnet-v1", alice))
            assert replay.count() == 4  # alice's ciphertext is there, unreadable
        finally:
            replay.close()
        # Brute force: no data key left in the key database opens any of alice's values.
        with psycopg.connect(db.keys_url) as conn:
            wrapped = conn.execute("SELECT kid, wrapped FROM subject_keys").fetchall()
        assert len(wrapped) == 1  # bob's
        keyring = Keyring(key)
        candidates = [keyring.unwrap(kid, w)._aead for kid, w in wrapped] + [AESGCM(key)]
        for vector, name, consent, source_key, subject, sha in sealed:
            for blob, aad in ((vector, f"vec|{subject}|dlib-resnet-v1|{sha}"), (name, f"name|{subject}"),
                              (consent, f"consent|{subject}"), (source_key, f"key|{subject}|{sha}")):
                blob = bytes(blob)
                for aead in candidates:
                    with pytest.raises(InvalidTag):
                        aead.decrypt(blob[4:16], blob[16:], aad.encode())
    finally:
        fixtures_pg.drop_databases(restored)


def test_an_erasure_is_honoured_within_a_second_when_the_listener_connection_is_cut(pg_gallery_urls) -> None:
    import psycopg

    db = pg_gallery_urls
    key = secrets.token_bytes(32)
    v = np.random.default_rng(12).standard_normal((2, 128)).astype(np.float32)
    a = PostgresGallery(db.url, key, keys_url=db.keys_url)
    b = PostgresGallery(db.url, key, keys_url=db.keys_url)
    try:
        assert a.nearest("dlib-resnet-v1", v[0]) == [[]]  # both hosts listening
        a.add_embedding("carol", "dlib-resnet-v1", v[0], photo_sha256="c" * 64)
        wait_until(lambda: bool(b.nearest("dlib-resnet-v1", v[0])[0]), 1.0)  # enrolment seen on the other host
        with psycopg.connect(fixtures_pg.ADMIN_URL, autocommit=True) as admin:
            cut = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                                "AND application_name = 'facewarden-gallery-listener'", (db.name,)).fetchall()
        assert len(cut) == 2  # both hosts' listeners
        a.delete("carol")
        wait_until(lambda: not b.nearest("dlib-resnet-v1", v[0])[0], 1.0)  # erasure honoured
        # Once the listener is back, new enrolments flow again.
        a.add_embedding("dave", "dlib-resnet-v1", v[1], photo_sha256="d" * 64)
        wait_until(lambda: bool(b.nearest("dlib-resnet-v1", v[1])[0]), 3.0)
    finally:
        a.close()
        b.close()


def test_settings_open_the_postgres_gallery_with_a_password_file(pg_gallery_urls, tmp: Path) -> None:
    db = pg_gallery_urls
    key_file, password_file = tmp / "gallery.key", tmp / "pg.password"
    key_file.write_text(secrets.token_hex(32) + "\n")
    password_file.write_text("not-checked-by-trust-auth\n")
    settings = Settings.model_validate({"state_dir": str(tmp / "state"), "gallery": {
        "url": db.url, "password_file": str(password_file), "key_file": str(key_file)}})
    g = open_configured(settings)
    try:
        assert isinstance(g, PostgresGallery) and g.keys_url == db.keys_url  # name + "_keys" by default
        g.add_embedding("erin", "dlib-resnet-v1", np.ones(128, np.float32), photo_sha256="e" * 64)
        assert g.count() == 1
    finally:
        g.close()
    with pytest.raises(ValidationError, match="password_file"):
        Settings.model_validate({"gallery": {"url": "postgresql://u:secret@127.0.0.1/db"}})
    no_key = Settings.model_validate({"state_dir": str(tmp / "s2"), "gallery": {"url": db.url}})
    with pytest.raises(GalleryError) as exc:
        open_configured(no_key)
    assert exc.value.code == "gallery.key_required"


def test_the_periodic_check_repairs_an_index_that_missed_a_change(pg_gallery_urls) -> None:
    """A change whose notification never arrived (written here behind the gallery's back)
    is picked up by the full check every ``refresh_interval`` s."""
    import psycopg

    db = pg_gallery_urls
    key = secrets.token_bytes(32)
    v = np.random.default_rng(13).standard_normal((2, 128)).astype(np.float32)
    g = PostgresGallery(db.url, key, keys_url=db.keys_url, refresh_interval=0.5)
    try:
        g.add_embedding("frank", "dlib-resnet-v1", v[0], photo_sha256="f" * 64)
        g.add_embedding("gina", "dlib-resnet-v1", v[1], photo_sha256="g" * 64)
        assert g.nearest("dlib-resnet-v1", v[0])[0][0].subject == "frank"
        with psycopg.connect(db.url, autocommit=True) as conn, conn.transaction():
            conn.execute("DELETE FROM embeddings WHERE subject = 'frank'")
            conn.execute("UPDATE gallery_generation SET gen = gen + 1")
        wait_until(lambda: g.nearest("dlib-resnet-v1", v[0])[0][0].subject == "gina", 3.0)
    finally:
        g.close()
