"""S3Store against moto's S3 over real HTTP (ThreadedMotoServer on 127.0.0.1)."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_s3 are re-bound as arguments)

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest
from fixtures_s3 import make_store, moto_server, s3_client, s3_env, sample_photo  # noqa: F401

from facewarden.config.schema import Settings
from facewarden.errors import StoreError, UnsafeKey
from facewarden.storage.base import Store
from facewarden.storage.s3 import MAX_METADATA_BYTES, S3Store, encode_metadata
from facewarden.storage.stores import open_stores


@pytest.fixture
def bucket(s3_client: Any) -> str:
    s3_client.create_bucket(Bucket="raw-images")
    return "raw-images"


def test_roundtrip_with_prefix_metadata_and_etag(s3_env: str, s3_client: Any, bucket: str) -> None:
    store = make_store(s3_env, "raw", bucket, prefix="in/")
    assert isinstance(store, Store)
    photo = sample_photo()
    key = "2024 trip/été+1.jpg"
    store.put(key, photo, content_type="image/jpeg",
              metadata={"outcome": "ok", "faces": "3", "Input Key": "ünïcode/ä.jpg"})
    # the store prefix is applied in the bucket and invisible to the caller
    head = s3_client.head_object(Bucket=bucket, Key="in/" + key)
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"]["outcome"] == "ok"
    assert head["Metadata"]["input-key"].isascii()
    assert unquote(head["Metadata"]["input-key"]) == "ünïcode/ä.jpg"
    assert store.get(key) == photo
    info = store.stat(key)
    assert info is not None and info.size == len(photo) and info.key == key
    assert info.version == head["ETag"].strip('"')
    assert store.uri(key) == f"s3://raw-images/in/{key}"
    assert [o.key for o in store.list()] == [key]


def test_missing_objects(s3_env: str, bucket: str) -> None:
    store = make_store(s3_env, "raw", bucket)
    assert store.stat("nope.jpg") is None
    with pytest.raises(StoreError) as err:
        store.get("nope.jpg")
    assert err.value.code == "store.not_found" and not err.value.retryable
    with pytest.raises(FileNotFoundError):  # same contract as LocalStore
        store.get("nope.jpg")
    store.delete("nope.jpg")  # deleting what is not there is not an error


def test_delete(s3_env: str, bucket: str) -> None:
    store = make_store(s3_env, "raw", bucket)
    store.put("a.jpg", b"1")
    store.delete("a.jpg")
    assert store.stat("a.jpg") is None


def test_list_paginates_and_honours_prefixes(s3_env: str, s3_client: Any, bucket: str) -> None:
    store = make_store(s3_env, "raw", bucket, prefix="p")
    store.page_size = 4  # several list_objects_v2 pages without writing thousands of objects
    calls: list[int] = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2",
                                      lambda **kw: calls.append(1))
    for i in range(9):
        s3_client.put_object(Bucket=bucket, Key=f"p/sub/{i:05d}.jpg", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="p/other/z.jpg", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="outside.jpg", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="p/folder/", Body=b"")
    sub = list(store.list("sub/"))
    assert len(sub) == 9 and sub[0].key == "sub/00000.jpg" and sub[0].size == 1
    assert len(calls) == 3
    assert len(list(store.list())) == 10
    assert [o.key for o in store.list("other")] == ["other/z.jpg"]


def test_unsafe_keys_are_refused_and_skipped(s3_env: str, s3_client: Any, bucket: str) -> None:
    store = make_store(s3_env, "raw", bucket)
    for bad in ("../x.jpg", "/abs.jpg", "a/./b.jpg", "a\\b.jpg"):
        with pytest.raises(UnsafeKey):
            store.put(bad, b"x")
        with pytest.raises(UnsafeKey):
            store.get(bad)
    s3_client.put_object(Bucket=bucket, Key="a/../b.jpg", Body=b"x")  # written by someone else
    s3_client.put_object(Bucket=bucket, Key="fine.jpg", Body=b"x")
    assert [o.key for o in store.list()] == ["fine.jpg"]


def test_sse_is_requested(s3_env: str, s3_client: Any, bucket: str) -> None:
    store = make_store(s3_env, "raw", bucket, sse="AES256")
    store.put("enc.jpg", b"secret")
    assert s3_client.head_object(Bucket=bucket, Key="enc.jpg")["ServerSideEncryption"] == "AES256"


def test_unreachable_endpoint_is_a_retryable_store_error() -> None:
    store = make_store("http://127.0.0.1:9", "raw", "b", max_attempts=1, connect_timeout=1)
    with pytest.raises(StoreError) as err:
        store.stat("a.jpg")
    assert err.value.retryable


def test_missing_bucket_is_not_retryable(s3_env: str) -> None:
    store = make_store(s3_env, "raw", "no-such-bucket")
    with pytest.raises(StoreError) as err:
        store.put("a.jpg", b"x")
    assert not err.value.retryable


def test_metadata_stays_inside_the_limit() -> None:
    meta = encode_metadata({"small": "1", "huge": "x" * 5000, "sha256": "ab" * 32})
    assert meta["small"] == "1" and "huge" not in meta and meta["sha256"] == "ab" * 32
    assert "huge" in meta["fw-truncated"]
    assert sum(len(k) + len(v) for k, v in meta.items()) <= MAX_METADATA_BYTES
    assert encode_metadata({"Weird Name!": "line\nbreak"}) == {"weird-name": "line%0Abreak"}


def test_factory_opens_named_s3_stores(s3_env: str, bucket: str) -> None:
    settings = Settings(stores={"raw": {"type": "s3", "bucket": bucket, "endpoint_url": s3_env,
                                        "prefix": "in", "addressing_style": "path"}})
    stores = open_stores(settings.all_stores())
    assert isinstance(stores["raw"], S3Store)
    stores["raw"].put("k.jpg", b"1")
    assert stores["raw"].get("k.jpg") == b"1"


def test_sse_kms_with_key_id(s3_env: str, s3_client: Any, bucket: str) -> None:
    import boto3

    key_id = boto3.client("kms", endpoint_url=s3_env).create_key()["KeyMetadata"]["Arn"]
    store = make_store(s3_env, "raw", bucket, sse="aws:kms", kms_key_id=key_id)
    store.put("kms.jpg", b"secret")
    head = s3_client.head_object(Bucket=bucket, Key="kms.jpg")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_id
    assert store.get("kms.jpg") == b"secret"
