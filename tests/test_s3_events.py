"""The S3 notification normaliser on recorded AWS, MinIO and moto payload shapes."""

from __future__ import annotations

import json

import pytest
from fixtures_s3 import EVENTS_DIR, load_event

from facewarden.config.sources import ReconcileSourceConfig, SqsSourceConfig
from facewarden.daemon.jobs import Event
from facewarden.daemon.sources.s3_events import (
    BucketMap,
    RecentEvents,
    emit_all,
    normalize_s3_notification,
    parse_options,
)
from facewarden.errors import ConfigError

RAW = BucketMap([("raw", "raw-images", "")])


def norm(name: str, buckets: BucketMap | None = RAW) -> list[Event]:
    return normalize_s3_notification(load_event(name), buckets=buckets, source="t")


def test_every_fixture_is_handled_without_raising() -> None:
    for path in sorted(EVENTS_DIR.glob("*.json")):
        for payload in (json.loads(path.read_text()), path.read_text(), path.read_bytes()):
            assert isinstance(normalize_s3_notification(payload, buckets=RAW), list), path.name


def test_aws_key_with_spaces_and_plus_is_decoded() -> None:
    [ev] = norm("aws_put_spaces_plus.json")
    assert (ev.store, ev.key) == ("raw", "uploads/team photo +1 2024.jpg")
    assert ev.version == "d41d8cd98f00b204e9800998ecf8427e"
    assert ev.source == "t"
    assert ev.hints["event_name"] == "ObjectCreated:Put" and ev.hints["size"] == 1024


def test_moto_unicode_key_with_encoded_slash() -> None:
    [ev] = norm("moto_put_unicode.json")
    assert ev.key == "a dir/é+x.jpg"


def test_minio_wrapper_with_s3_prefixed_event_name_and_unicode() -> None:
    [ev] = norm("minio_put_unicode.json")
    assert (ev.store, ev.key) == ("raw", "写真/group photo+1.jpg")
    assert ev.version == "f1671feacb8bbf7b0397c6e9364e8c92"


@pytest.mark.parametrize("name", ["aws_test_event.json", "moto_test_event.json",
                                  "aws_removed.json", "minio_removed.json",
                                  "minio_put_tagging.json"])
def test_ignored_notifications(name: str) -> None:
    assert norm(name) == []


def test_multipart_put_and_complete_share_one_identity() -> None:
    """moto (and some S3 servers) send Put and CompleteMultipartUpload for one upload:
    both carry the same ETag, so version-based dedup keeps exactly one."""
    a = norm("aws_multipart_put.json")
    b = norm("aws_multipart_complete.json")
    c = norm("minio_multipart_complete.json")
    assert len(a) == len(b) == len(c) == 1
    assert (a[0].store, a[0].key, a[0].version) == (b[0].store, b[0].key, b[0].version) \
        == (c[0].store, c[0].key, c[0].version)
    recent, emitted = RecentEvents(), []
    assert emit_all(a + b + c, emitted.append, recent) == 1 and emitted == a
    # both records in one message give one event
    both = {"Records": load_event("aws_multipart_put.json")["Records"]
            + load_event("aws_multipart_complete.json")["Records"]}
    assert len(normalize_s3_notification(both, buckets=RAW)) == 1


def test_unsafe_key_is_dropped_not_raised_and_its_neighbours_survive() -> None:
    events = norm("aws_unsafe_key.json")
    assert [e.key for e in events] == ["ok/safe.jpg"]


def test_sns_envelope_is_unwrapped() -> None:
    [ev] = norm("aws_sns_wrapped.json")
    assert ev.key == "copied/a b.jpg" and ev.hints["event_name"] == "ObjectCreated:Copy"


def test_unknown_bucket_is_dropped() -> None:
    assert norm("other_bucket.json") == []
    # without a bucket map the bucket name stands in for the store
    [ev] = norm("other_bucket.json", buckets=None)
    assert ev.store == "somebody-elses-bucket"


def test_store_prefix_is_stripped_and_longest_prefix_wins() -> None:
    bm = BucketMap([("all", "raw-images", ""), ("uploads", "raw-images", "uploads"),
                    ("elsewhere", "raw-images", "nope")])
    [ev] = norm("aws_put_spaces_plus.json", buckets=bm)
    assert (ev.store, ev.key) == ("uploads", "team photo +1 2024.jpg")
    only_prefixed = BucketMap([("elsewhere", "raw-images", "nope")])
    assert norm("aws_put_spaces_plus.json", buckets=only_prefixed) == []


@pytest.mark.parametrize("payload", [b"\xff\xfe not utf8", "not json", "[1, 2]", "42",
                                     {"Records": "nope"}, {"Records": [1, {"s3": 5}]}])
def test_garbage_gives_no_events(payload: object) -> None:
    assert normalize_s3_notification(payload, buckets=RAW) == []  # type: ignore[arg-type]


def test_sequencer_stands_in_for_missing_etag() -> None:
    payload = {"Records": [{"eventName": "s3:ObjectCreated:Post",
                            "s3": {"bucket": {"name": "raw-images"},
                                   "object": {"key": "x.jpg", "sequencer": "00ABC"}}}]}
    [ev] = normalize_s3_notification(payload, buckets=RAW)
    assert ev.version == "00ABC"


def test_option_errors_name_the_source_and_key() -> None:
    cfg = {"type": "reconcile", "name": "mine", "store": "raw", "interval": "soon"}
    with pytest.raises(ConfigError, match=r"sources\[mine\]\.interval"):
        parse_options(ReconcileSourceConfig, cfg)
    cfg = {"type": "reconcile", "name": "mine", "store": "raw", "intervall": 1}
    with pytest.raises(ConfigError, match=r"sources\[mine\]\.intervall: unknown key; did you mean interval\?"):
        parse_options(ReconcileSourceConfig, cfg)
    with pytest.raises(ConfigError, match=r"sources\[mine\]\.type"):
        parse_options(SqsSourceConfig, {"type": "reconcile", "name": "mine", "store": "raw"})


def test_a_failed_emit_is_not_remembered() -> None:
    [ev] = norm("aws_put_spaces_plus.json")
    recent = RecentEvents()

    def broken(_e: Event) -> None:
        raise RuntimeError("queue down")

    with pytest.raises(RuntimeError):
        emit_all([ev], broken, recent)
    got: list[Event] = []
    assert emit_all([ev], got.append, recent) == 1 and got == [ev]
