"""One normaliser for S3 event notifications, whoever sends them and however they travel.

AWS (via SQS or SNS->SQS), MinIO (AMQP, webhook, listen API) and moto all describe a new
object with the same ``Records[].s3`` shape but differ in the details this module
absorbs: ``eventName`` with or without the ``s3:`` prefix, MinIO's
``{"EventName","Key","Records"}`` wrapper, SNS envelopes, URL-encoded keys (``+`` is a
space, ``%2B`` a plus), the ``s3:TestEvent`` a bucket sends when notifications are set
up, and removals we do not act on. Everything that reaches ``emit`` has a key that passed
``safe_key`` and belongs to a configured store; everything else is logged and dropped
here, so a hostile or malformed notification can never break a consumer loop.

Also shared by the S3 sources: option parsing with errors that name the key, a small
recent-events filter (reconnect backoff is facewarden.daemon.backoff).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote_plus

import structlog

from facewarden.config.sources import parse_source
from facewarden.daemon.jobs import Event
from facewarden.errors import ConfigError, UnsafeKey
from facewarden.storage.base import safe_key

log = structlog.get_logger(__name__)

#: ObjectCreated events that change metadata only (MinIO): the content, hence the
#: result, is unchanged, so they are not new work.
METADATA_ONLY = {"PutRetention", "PutLegalHold", "PutTagging", "DeleteTagging", "PutACL"}


@dataclass(frozen=True, slots=True)
class S3Record:
    """One object-level notification, decoded but not yet tied to a store."""

    event_name: str  # without the "s3:" prefix, e.g. "ObjectCreated:Put"
    bucket: str
    key: str  # decoded (unquote_plus), not yet validated
    etag: str
    sequencer: str
    version_id: str
    size: int | None
    event_time: str


# -- parsing --------------------------------------------------------------------------
def _as_dict(payload: dict[str, Any] | str | bytes) -> dict[str, Any] | None:
    if isinstance(payload, bytes | bytearray):
        payload = bytes(payload).decode("utf-8")
    if isinstance(payload, str):
        payload = json.loads(payload)
    return payload if isinstance(payload, dict) else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_s3_records(payload: dict[str, Any] | str | bytes) -> list[S3Record]:
    """Every object record in a notification, of any event type.

    Raises ``ValueError`` (``json.JSONDecodeError`` included) for bodies that are not
    JSON objects; unknown shapes without records give an empty list.
    """
    doc = _as_dict(payload)
    if doc is None:
        raise ValueError("an S3 notification must be a JSON object")
    # SNS -> SQS fan-out wraps the S3 document as a string in "Message".
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_s3_records(doc["Message"])
    if str(doc.get("Event", "")).removeprefix("s3:") == "TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        records = []
    out: list[S3Record] = []
    for rec in records:
        if not isinstance(rec, dict):
            continue
        s3 = rec.get("s3")
        if not isinstance(s3, dict):
            continue
        bucket = (s3.get("bucket") or {}).get("name")
        obj = s3.get("object") or {}
        raw_key = obj.get("key")
        if not isinstance(bucket, str) or not isinstance(raw_key, str):
            continue
        out.append(S3Record(
            event_name=str(rec.get("eventName", "")).removeprefix("s3:"),
            bucket=bucket,
            key=unquote_plus(raw_key),
            etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
            sequencer=str(obj.get("sequencer") or ""),
            version_id=str(obj.get("versionId") or ""),
            size=_int_or_none(obj.get("size")),
            event_time=str(rec.get("eventTime", "")),
        ))
    if not out and isinstance(doc.get("EventName"), str) and isinstance(doc.get("Key"), str):
        # MinIO wrapper without records: Key is "bucket/object", not URL-encoded.
        bucket, _, key = doc["Key"].partition("/")
        if bucket and key:
            out.append(S3Record(event_name=doc["EventName"].removeprefix("s3:"), bucket=bucket,
                                key=key, etag="", sequencer="", version_id="", size=None,
                                event_time=""))
    return out


def is_new_content(event_name: str) -> bool:
    kind, _, detail = event_name.removeprefix("s3:").partition(":")
    return kind == "ObjectCreated" and detail not in METADATA_ONLY


# -- stores -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Watched:
    store: str
    bucket: str
    prefix: str  # "" or "raw" (no slashes at the ends)


class BucketMap:
    """Which configured store a (bucket, bucket-key) belongs to, and its store-relative key.

    Several stores may share a bucket under different prefixes: the longest matching
    prefix wins, as it is the most specific store.
    """

    def __init__(self, watched: Iterable[tuple[str, str, str]]):
        self._by_bucket: dict[str, list[_Watched]] = {}
        for store, bucket, prefix in watched:
            entry = _Watched(store, bucket, prefix.strip("/"))
            self._by_bucket.setdefault(bucket, []).append(entry)
        for entries in self._by_bucket.values():
            entries.sort(key=lambda w: len(w.prefix), reverse=True)

    @classmethod
    def from_stores(cls, stores: dict[str, Any], only: Iterable[str] | None = None) -> BucketMap:
        """From opened stores (or their configs): every one that has a ``bucket``."""
        wanted = set(only) if only is not None else None
        watched = []
        for name, st in stores.items():
            if wanted is not None and name not in wanted:
                continue
            bucket = getattr(st, "bucket", None)
            if isinstance(bucket, str):
                watched.append((name, bucket, str(getattr(st, "prefix", "") or "")))
        return cls(watched)

    def __bool__(self) -> bool:
        return bool(self._by_bucket)

    @property
    def buckets(self) -> list[str]:
        return sorted(self._by_bucket)

    def resolve(self, bucket: str, key: str) -> tuple[str, str] | None:
        for w in self._by_bucket.get(bucket, []):
            if not w.prefix:
                return w.store, key
            if key.startswith(w.prefix + "/"):
                return w.store, key[len(w.prefix) + 1:]
        return None


def normalize_s3_notification(payload: dict[str, Any] | str | bytes, *,
                              buckets: BucketMap | None = None,
                              source: str = "s3") -> list[Event]:
    """Events for the new objects in one notification, at most one per object version.

    ``buckets`` maps buckets to store names; without it the bucket name is used as the
    store name (handy for tools and tests). ``Event.version`` is the ETag (equal for
    the Put and CompleteMultipartUpload of one multipart upload, so the queue's dedup
    keeps one), or the version id / sequencer when a sender leaves the ETag out.
    Never raises for bad content: malformed payloads are logged and give [].
    """
    try:
        records = parse_s3_records(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("s3_event.unparseable", source=source, error=type(exc).__name__)
        return []
    events: list[Event] = []
    seen: set[tuple[str, str, str]] = set()
    for rec in records:
        if not is_new_content(rec.event_name):
            log.debug("s3_event.ignored", source=source, event_name=rec.event_name)
            continue
        try:
            bucket_key = safe_key(rec.key)
        except UnsafeKey as exc:
            log.warning("s3_event.unsafe_key", source=source, bucket=rec.bucket,
                        reason=exc.message)
            continue
        if buckets is None:
            store, key = rec.bucket, bucket_key
        else:
            hit = buckets.resolve(rec.bucket, bucket_key)
            if hit is None:
                log.info("s3_event.unknown_bucket", source=source, bucket=rec.bucket,
                         key=bucket_key)
                continue
            store, key = hit
        version = rec.etag or rec.version_id or rec.sequencer
        ident = (store, key, version)
        if ident in seen:
            continue
        seen.add(ident)
        hints: dict[str, Any] = {"bucket": rec.bucket, "event_name": rec.event_name}
        if rec.size is not None:
            hints["size"] = rec.size
        if rec.event_time:
            hints["event_time"] = rec.event_time
        events.append(Event(store=store, key=key, source=source, version=version, hints=hints))
    return events


# -- helpers shared by the S3 sources ------------------------------------------------------
class RecentEvents:
    """Remembers recently emitted (store, key, version) triples for a while.

    The Put and CompleteMultipartUpload of one upload usually arrive in separate
    messages; dropping the second here saves a durable enqueue. The queue's own dedup
    stays the real guarantee, this is an optimisation with bounded memory.
    """

    def __init__(self, size: int = 4096, ttl: float = 600.0):
        self._size, self._ttl = size, ttl
        self._items: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, ev: Event) -> bool:
        if not ev.version:
            return False
        with self._lock:
            at = self._items.get((ev.store, ev.key, ev.version))
            return at is not None and time.monotonic() - at < self._ttl

    def add(self, ev: Event) -> None:
        """Called only after emit returned, so a failed emit is retried, not forgotten."""
        if not ev.version:
            return
        ident = (ev.store, ev.key, ev.version)
        with self._lock:
            self._items[ident] = time.monotonic()
            self._items.move_to_end(ident)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def emit_all(events: list[Event], emit: Any, recent: RecentEvents,
             accepts: Callable[[str], bool] | None = None) -> int:
    """Emits each event not recently emitted and whose key the source ``accepts`` (its
    `prefixes`/`ignore` filters); raises whatever emit raises. Returns count."""
    n = 0
    for ev in events:
        if accepts is not None and not accepts(ev.key):
            log.debug("s3_event.filtered", source=ev.source, store=ev.store)
            continue
        if recent.seen(ev):
            log.debug("s3_event.repeat", source=ev.source, store=ev.store)
            continue
        emit(ev)
        recent.add(ev)
        n += 1
    return n


M = TypeVar("M")


def parse_options(model: type[M], cfg: Any) -> M:
    """The source's options as ``model``: validated already when they come from Settings,
    validated here when a tool or test passes a mapping. Errors name the source and key."""
    opts = parse_source(cfg)
    if not isinstance(opts, model):
        raise ConfigError("config.invalid", f"sources[{opts.name}].type: {opts.type!r} options given "
                          f"to a {getattr(model, '__name__', model)} source")
    return opts


def check_stores(names: list[str], ctx_stores: dict[str, Any], source: str) -> BucketMap:
    """The bucket map for an S3 event source; fails at start-up on a wrong store name."""
    for s in names:
        if s not in ctx_stores:
            raise ConfigError("config.invalid",
                              f"sources[{source}].stores: no store named {s!r} "
                              f"(known: {sorted(ctx_stores)})")
        if not isinstance(getattr(ctx_stores[s], "bucket", None), str):
            raise ConfigError("config.invalid",
                              f"sources[{source}].stores: store {s!r} is not an S3 store")
    return BucketMap.from_stores(ctx_stores, names)
