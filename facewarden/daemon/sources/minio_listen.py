"""S3 events from MinIO's listen API (``ListenBucketNotification``), via the minio client.

No notification target has to be configured on the MinIO server: we hold a long-lived
GET per bucket and MinIO streams newline-delimited JSON records, with blank keep-alive
lines in between. The stream has no acknowledgements, so an event that happens while
we are disconnected is not replayed: pair this source with a ``reconcile`` source. One
thread per watched bucket; a broken or silent stream (no keep-alive within
``read_timeout``) is reopened with backoff.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import structlog
import urllib3
from minio import Minio
from minio.credentials import (
    AWSConfigProvider,
    ChainedProvider,
    EnvAWSProvider,
    EnvMinioProvider,
    IamAwsProvider,
    StaticProvider,
)

from facewarden.config.sources import ListenSourceConfig as ListenOptions
from facewarden.daemon.backoff import Backoff
from facewarden.daemon.sources import Emit, SourceContext, register_source
from facewarden.daemon.sources.s3_events import (
    BucketMap,
    RecentEvents,
    check_stores,
    emit_all,
    normalize_s3_notification,
    parse_options,
)
from facewarden.errors import ConfigError

log = structlog.get_logger(__name__)


class _Stopped(Exception):
    pass


class ListenSource:
    def __init__(self, opts: ListenOptions, buckets: BucketMap, watched: list[tuple[str, str]],
                 endpoint: str):
        self.name = opts.name
        self.opts = opts
        self.buckets = buckets
        #: (bucket, key prefix) pairs to listen to
        self.watched = watched
        self.endpoint = endpoint
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: dict[str, Any] = {}
        self._connected: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._recent = RecentEvents()

    def _client(self) -> Minio:
        url = urlsplit(self.endpoint)
        if self.opts.access_key and self.opts.secret_key:
            creds: Any = StaticProvider(self.opts.access_key, self.opts.secret_key.get_secret_value())
        else:
            creds = ChainedProvider([EnvAWSProvider(), EnvMinioProvider(), AWSConfigProvider(),
                                     IamAwsProvider()])
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=self.opts.read_timeout),
            retries=urllib3.Retry(total=0),
            cert_reqs="CERT_REQUIRED" if self.opts.cert_check else "CERT_NONE")
        return Minio(url.netloc, secure=url.scheme == "https", region=self.opts.region,
                     credentials=creds, http_client=http)

    def start(self, emit: Emit) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, args=(bucket, prefix, emit),
                                          name=f"src-{self.name}-{bucket}", daemon=True)
                         for bucket, prefix in self.watched]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            streams = list(self._streams.values())
        for it in streams:
            # close() alone does not wake a thread blocked in recv(); shutdown() does.
            resp = getattr(it, "_response", None)
            sock = getattr(getattr(resp, "_connection", None), "sock", None)
            with contextlib.suppress(Exception):
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=10)

    def ready(self) -> bool:
        with self._lock:
            return len(self._connected) == len(self.watched) and all(self._connected.values())

    def _run(self, bucket: str, prefix: str, emit: Emit) -> None:
        backoff = Backoff()
        client = self._client()
        while not self._stop.is_set():
            try:
                stream = client.listen_bucket_notification(
                    bucket, prefix=prefix, suffix=self.opts.suffix, events=tuple(self.opts.events))
                # The iterable silently reopens a finished stream; make it stop when we do.
                opener = stream._func

                def reopen(opener: Any = opener, bucket: str = bucket) -> Any:
                    if self._stop.is_set():
                        raise _Stopped
                    resp = opener()
                    with self._lock:
                        self._connected[bucket] = True
                    backoff.reset()
                    return resp

                stream._func = reopen
                with self._lock:
                    self._streams[bucket] = stream
                with stream:
                    for doc in stream:
                        events = normalize_s3_notification(doc, buckets=self.buckets,
                                                           source=self.name)
                        emit_all(events, emit, self._recent, accepts=self.opts.accepts)
            except _Stopped:
                break
            except Exception as exc:
                with self._lock:
                    self._connected[bucket] = False
                if self._stop.is_set():
                    break
                delay = backoff.next()
                log.warning("source.listen_error", source=self.name, bucket=bucket,
                            error=type(exc).__name__, detail=str(exc)[:200],
                            retry_in=round(delay, 2))
                self._stop.wait(delay)
        with self._lock:
            self._connected[bucket] = False
            self._streams.pop(bucket, None)


def _factory(cfg: Any, ctx: SourceContext) -> ListenSource:
    opts = parse_options(ListenOptions, cfg)
    buckets = check_stores(opts.stores, ctx.stores, opts.name)
    names = opts.stores
    watched: dict[str, str] = {}
    endpoint = opts.endpoint
    for n in names:
        st = ctx.stores[n]
        prefix = str(getattr(st, "prefix", "") or "").strip("/")
        prefix = prefix + "/" if prefix else ""
        # two stores in one bucket: listen once, to their common prefix
        old = watched.get(st.bucket)
        if old is None:
            watched[st.bucket] = prefix
        else:
            common = ""
            for a, b in zip(old, prefix, strict=False):
                if a != b:
                    break
                common += a
            watched[st.bucket] = common[: common.rfind("/") + 1]
        endpoint = endpoint or getattr(st, "endpoint_url", None)
    if not endpoint:
        raise ConfigError("config.invalid", f"sources[{opts.name}].endpoint: no MinIO endpoint "
                          "(set it here or endpoint_url on the store)")
    return ListenSource(opts, buckets, sorted(watched.items()), endpoint)


register_source("minio-listen", _factory)
