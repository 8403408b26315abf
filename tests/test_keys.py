"""Untrusted names become safe keys, or are refused: nothing may point outside a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from facewarden.errors import UnsafeKey
from facewarden.storage.base import join_key, safe_key
from facewarden.storage.local import LocalStore

BAD = ["../x", "/etc/passwd", "a/../../b", "a/..", "..", ".", "./a", "a/./b", "a//b", "",
       "a\x00b.jpg", "a\\..\\b.jpg", "dir\\photo.jpg", "x" * 1100]
GOOD = ["photo.jpg", "with space.jpg", "sub dir/My Photo (1).jpg", "ünïcødé/фото 写真.jpg",
        "line\nbreak.jpg", "a+b=c.jpg", "2024/06/01/IMG_0001.JPG", "...jpg", "a..b.jpg", "~$tmp"]


@pytest.mark.parametrize("key", BAD, ids=repr)
def test_safe_key_refuses(key: str):
    with pytest.raises(UnsafeKey) as exc:
        safe_key(key)
    assert exc.value.code == "key.unsafe" and exc.value.message


@pytest.mark.parametrize("key", GOOD, ids=repr)
def test_safe_key_accepts(key: str):
    assert safe_key(key) == key


def test_join_key():
    assert join_key("out/", "a b/c.jpg") == "out/a b/c.jpg"
    assert join_key("", "c.jpg") == "c.jpg"
    with pytest.raises(UnsafeKey):
        join_key("out", "../../etc/passwd")


@pytest.fixture
def store(tmp: Path) -> LocalStore:
    (tmp / "root").mkdir()
    (tmp / "outside").mkdir()
    (tmp / "outside" / "secret.txt").write_text("secret")
    return LocalStore("s", tmp / "root", fsync=False)


@pytest.mark.parametrize("key", BAD, ids=repr)
def test_path_of_refuses(store: LocalStore, key: str):
    with pytest.raises(UnsafeKey):
        store.path_of(key)


@pytest.mark.parametrize("key", GOOD, ids=repr)
def test_local_store_round_trips_odd_names(store: LocalStore, key: str):
    store.put(key, b"data " + key.encode())
    assert store.path_of(key) == store.root / key
    assert store.get(key) == b"data " + key.encode()
    assert [o.key for o in store.list()] == [key]
    assert store.key_of(store.root / key) == key


def test_symlinked_folder_pointing_outside_is_refused(store: LocalStore, tmp: Path):
    (store.root / "escape").symlink_to(tmp / "outside")
    with pytest.raises(UnsafeKey):
        store.path_of("escape/secret.txt")
    with pytest.raises(UnsafeKey):
        store.get("escape/secret.txt")
    with pytest.raises(UnsafeKey):
        store.put("escape/new.jpg", b"x")
    assert not (tmp / "outside" / "new.jpg").exists()


def test_symlinked_folder_inside_the_root_is_fine(store: LocalStore):
    (store.root / "real").mkdir()
    (store.root / "alias").symlink_to(store.root / "real")
    store.put("alias/a.jpg", b"x")
    assert (store.root / "real" / "a.jpg").read_bytes() == b"x"


def test_symlinked_file_pointing_outside_is_refused(store: LocalStore, tmp: Path):
    (store.root / "photo.jpg").symlink_to(tmp / "outside" / "secret.txt")
    with pytest.raises(UnsafeKey):
        store.get("photo.jpg")


def test_key_of_refuses_paths_outside_the_root(store: LocalStore, tmp: Path):
    with pytest.raises(ValueError):
        store.key_of(tmp / "outside" / "secret.txt")
