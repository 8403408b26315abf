"""The options of every source type, one strict model each (a discriminated union on
``type``).

They live here, not beside each source's code, on purpose: the whole configuration must
validate (`facewarden config`, start-up, the overlap check) without importing pika, boto3,
minio or starlette, and secrets and env vars are resolved in one package. A new source
type is its model here (plus a line in ``SourceConfig``) and its runtime file in
facewarden/daemon/sources/, which receives the validated model.

Sources that *watch* a location (folder, the S3 event sources, reconcile) say which keys
they would pick up (``accepts``/``ignores_all_under``), so results written under a prefix
they ignore are never fed back in (see overlap.py).
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from facewarden.config.secrets import Secret, SecretUrl, StrictModel

DEFAULT_IGNORE = ["*.part", "*.tmp", "*.crdownload", "~$*", ".*", "@eaDir", "#recycle",
                  "Thumbs.db", "desktop.ini", ".DS_Store", "*.audit.json"]
#: Never inputs in a bucket: audit records and upload leftovers.
S3_DEFAULT_IGNORE = ["*.audit.json", "*.part", "*.tmp"]
#: The name prefix of the local store's temporary files (storage/local.py).
LOCAL_TMP_PREFIX = ".fw-tmp-"
_PROBE = "\x00probe\x00"


def _glob_ignores_all(rel: str, patterns: list[str]) -> bool:
    """True when some key glob ('*' crosses '/') matches every key under ``rel``."""
    rel = rel.strip("/") + "/"
    probes = (rel + _PROBE, rel + _PROBE + "/" + _PROBE + ".jpg")
    return any(all(fnmatch.fnmatchcase(p, pat) for p in probes) for pat in patterns)


class _Source(StrictModel):
    name: str = Field(min_length=1)

    def watched_stores(self) -> list[str]:
        """Stores this source notices new objects in by itself (empty: it is told which
        object to take, as webhooks and job messages are)."""
        return []

    def input_stores(self, all_stores: list[str]) -> list[str]:
        """Stores this source takes inputs from (watched or named in requests)."""
        return self.watched_stores()

    def ignores_all_under(self, store: str, rel: str) -> bool:
        """True when no key under ``rel`` (store-relative, '/'-separated) is ever emitted."""
        return False


class FolderSourceConfig(_Source):
    type: Literal["folder"] = "folder"
    name: str = Field("incoming", min_length=1)
    store: str = "incoming"
    #: auto: inotify for local disks, polling for network mounts (cifs/smb3/nfs in /proc/mounts).
    mode: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: float = Field(2.0, gt=0)
    #: A file counts as arrived once its size and mtime have not changed for this long.
    #: A close-after-write event shortens the wait to `close_delay`.
    stability_delay: float = Field(2.0, ge=0)
    close_delay: float = Field(0.05, ge=0)
    #: Full rescans catch anything the event stream missed.
    rescan_interval: float = Field(60.0, gt=0)
    recursive: bool = True
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))

    def watched_stores(self) -> list[str]:
        return [self.store]

    def ignores_all_under(self, store: str, rel: str) -> bool:
        parts = [p for p in rel.split("/") if p]
        if not parts:
            return False
        if not self.recursive:
            return True  # everything under a sub-folder is out of reach
        return any(p.startswith(LOCAL_TMP_PREFIX) or any(fnmatch.fnmatchcase(p, pat) for pat in self.ignore)
                   for p in parts)


class _S3EventSource(_Source):
    """Base of the S3 notification sources: which stores' bucket events are accepted, and
    which keys in them."""

    #: The S3 stores (by name) whose bucket events this source accepts. Explicit on
    #: purpose: a target bucket watched by mistake would feed results back as inputs.
    stores: list[str] = Field(min_length=1)
    #: Only keys under one of these prefixes (store-relative) are taken; empty = all.
    prefixes: list[str] = Field(default_factory=list)
    #: Keys never taken (fnmatch globs on the store-relative key; '*' crosses '/'), e.g.
    #: "anonymized/*" when results are written beside the originals.
    ignore: list[str] = Field(default_factory=lambda: list(S3_DEFAULT_IGNORE))

    def watched_stores(self) -> list[str]:
        return list(self.stores)

    def accepts(self, key: str) -> bool:
        if self.prefixes and not any(key.startswith(p.lstrip("/")) for p in self.prefixes):
            return False
        return not any(fnmatch.fnmatchcase(key, pat) for pat in self.ignore)

    def ignores_all_under(self, store: str, rel: str) -> bool:
        rel = rel.strip("/") + "/"
        if rel == "/":
            return False
        if self.prefixes and not any(p.lstrip("/").startswith(rel) or rel.startswith(p.lstrip("/"))
                                     for p in self.prefixes):
            return True
        return _glob_ignores_all(rel, self.ignore)


class SqsSourceConfig(_S3EventSource):
    """S3 event notifications delivered to an SQS queue (AWS, or anything speaking SQS)."""

    type: Literal["s3-sqs"]
    #: Full queue URL, or `queue_name` to look the URL up.
    queue_url: str | None = None
    queue_name: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    #: Long-poll wait per request (SQS allows 0-20 s); also bounds how long stop() takes.
    wait_time: int = Field(20, ge=0, le=20)
    max_messages: int = Field(10, ge=1, le=10)
    #: Seconds a received message stays hidden; None = the queue's own setting.
    visibility_timeout: int | None = Field(None, ge=0, le=43200)

    @model_validator(mode="after")
    def _queue_named(self) -> SqsSourceConfig:
        if not (self.queue_url or self.queue_name):
            raise ValueError("queue_url: queue_url or queue_name is required")
        return self


class AmqpEventSourceConfig(_S3EventSource):
    """MinIO's AMQP notification target: events on a RabbitMQ exchange."""

    type: Literal["s3-amqp"]
    url: SecretUrl = "amqp://guest:guest@127.0.0.1:5672/%2F"
    #: The exchange MinIO's AMQP target publishes to.
    exchange: str = "minio-events"
    exchange_type: Literal["direct", "fanout", "topic", "headers"] = "fanout"
    #: Declare the exchange (durable) if it does not exist; it must match MinIO's settings.
    declare_exchange: bool = True
    #: Our queue, bound to the exchange; created durable when missing.
    queue: str = "facewarden.s3-events"
    #: Routing/binding key: MinIO's `routing_key` for direct exchanges, a pattern for topic.
    binding_key: str = ""
    #: "quorum" survives a broker node loss; "classic" for brokers without quorum queues.
    queue_type: Literal["quorum", "classic"] = "quorum"
    prefetch: int = Field(32, ge=1)
    #: Seconds to wait before requeueing a delivery whose emit failed (no hot loop).
    retry_delay: float = Field(1.0, ge=0)
    #: Upper bound of the reconnect backoff (seconds) while the broker is away.
    reconnect_max_delay: float = Field(30.0, gt=0)


class WebhookSourceConfig(_S3EventSource):
    """MinIO's webhook target POSTs notifications to the daemon's HTTP app."""

    type: Literal["s3-webhook"]
    #: URL path of this source in the daemon's HTTP app; default /webhooks/s3/<name>.
    path: str | None = None
    #: Shared bearer token (MinIO's auth_token), at least 16 characters. Prefer
    #: `token_file` or `token_credential` to keep it out of the config file.
    token: Secret | None = None
    max_body_bytes: int = Field(1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _check(self) -> WebhookSourceConfig:
        if self.token is None:
            raise ValueError("token: give token, token_file or token_credential")
        if len(self.token.get_secret_value()) < 16:
            raise ValueError("token: use at least 16 random characters (e.g. `openssl rand -hex 32`)")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path: must start with '/'")
        return self


class ListenSourceConfig(_S3EventSource):
    """MinIO's listen API (no notification target needed on the server)."""

    type: Literal["minio-listen"]
    #: MinIO URL, e.g. http://minio:9000; default: the endpoint_url of the watched store.
    endpoint: str | None = None
    #: Static keys; without them the standard chain (AWS_*/MINIO_* env, ~/.aws, IAM role).
    access_key: str | None = None
    secret_key: Secret | None = None
    region: str | None = "us-east-1"
    cert_check: bool = True
    events: list[str] = Field(default_factory=lambda: ["s3:ObjectCreated:*"])
    suffix: str = ""
    #: MinIO sends keep-alives every few seconds; silence this long means a dead stream.
    read_timeout: float = Field(60.0, gt=0)


class ReconcileSourceConfig(_Source):
    """List a store and emit every object that has no audit record (lost events)."""

    type: Literal["reconcile"]
    #: The store to list (by name).
    store: str
    #: Only keys under this prefix (store-relative), e.g. "incoming/".
    prefix: str = ""
    #: Seconds between passes; the first pass runs at start-up (after `initial_delay`).
    interval: float = Field(3600.0, gt=0)
    initial_delay: float = Field(0.0, ge=0)
    #: Globs (fnmatch on the key, '*' crosses '/') never emitted: audit records, temp files.
    ignore: list[str] = Field(default_factory=lambda: list(S3_DEFAULT_IGNORE))
    #: Emit at most this many objects per pass (a huge backlog drains over several passes).
    max_per_pass: int = Field(100_000, ge=1)

    def watched_stores(self) -> list[str]:
        return [self.store]

    def ignores_all_under(self, store: str, rel: str) -> bool:
        rel = rel.strip("/") + "/"
        if rel == "/":
            return False
        prefix = self.prefix.lstrip("/")
        if prefix and not (prefix.startswith(rel) or rel.startswith(prefix)):
            return True
        return _glob_ignores_all(rel, self.ignore)


class AmqpJobsSourceConfig(_Source):
    """RabbitMQ job messages (docs/job-message.md): other systems ask for work."""

    type: Literal["amqp-jobs"]
    #: Broker; default: queue.rabbitmq.url.
    url: SecretUrl | None = None
    #: Queue the requests arrive on (durable quorum queue, declared here).
    queue: str = "facewarden.requests"
    #: Optional topic exchange to bind the queue to (empty: publish to the queue directly).
    exchange: str = ""
    binding_keys: list[str] = Field(default_factory=lambda: ["#"])
    dead_letter_exchange: str = "facewarden.requests.dlx"
    #: Empty: "<queue>.dead".
    dead_letter_queue: str = ""
    prefetch: int = Field(16, ge=1)
    #: Broker redeliveries (e.g. queue unavailable while emitting) before dead-lettering.
    delivery_limit: int = Field(5, ge=1)
    heartbeat: int = Field(30, ge=0)
    #: Stores a message may name as input (empty: every configured store).
    stores: list[str] = Field(default_factory=list)
    #: Handlers a message may ask for (empty: any registered handler).
    handlers: list[str] = Field(default_factory=list)
    #: Where inline images are written; none = inline images are invalid.
    raw_store: str | None = None
    inline_prefix: str = "amqp-inline"
    max_inline_bytes: int = Field(20 * 1024 * 1024, gt=0)

    def input_stores(self, all_stores: list[str]) -> list[str]:
        named = list(self.stores) or list(all_stores)
        return list(dict.fromkeys([*named, *([self.raw_store] if self.raw_store else [])]))


#: Upload types the DMS webhook accepts by default: photos (HEIC/AVIF from phones included)
#: and the video containers anonymize takes (facewarden/video/media.py).
DMS_IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp", "image/tiff", "image/bmp",
                   "image/heic", "image/heif", "image/avif",
                   "video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo"]


class DmsWebhookSourceConfig(_Source):
    """DMS post-upload webhook: ``POST /webhooks/dms`` queues an image."""

    type: Literal["dms-webhook"]
    #: Path of the upload webhook; the status endpoint is `<jobs_path>/{id}`.
    path: str = "/webhooks/dms"
    jobs_path: str = "/jobs"
    #: Shared HMAC secret, at least 16 bytes (prefer `secret_file` or `secret_credential`).
    secret: Secret | None = None
    #: Store a JSON body names when it gives no `store`.
    store: str | None = None
    #: Stores a JSON body may name (default: just `store`).
    stores: list[str] = Field(default_factory=list)
    #: Where multipart uploads are written before processing; none = uploads refused (415).
    raw_store: str | None = None
    upload_prefix: str = "dms-uploads"
    #: Request body limit in bytes (default: http.max_body_bytes).
    max_body_bytes: int | None = Field(None, gt=0)
    #: Accepted clock skew / replay window, seconds.
    replay_window: float = Field(300.0, gt=0, le=3600)
    image_types: list[str] = Field(default_factory=lambda: list(DMS_IMAGE_TYPES))

    @model_validator(mode="after")
    def _check(self) -> DmsWebhookSourceConfig:
        if self.secret is None:
            raise ValueError("secret: give secret, secret_file or secret_credential")
        if len(self.secret.get_secret_value().encode()) < 16:
            raise ValueError("secret: use at least 16 random bytes (e.g. `openssl rand -hex 32`)")
        if self.store is None and not self.stores and self.raw_store is None:
            raise ValueError("store: give `store` (JSON bodies), `raw_store` (uploads), or both")
        if not self.path.startswith("/") or not self.jobs_path.startswith("/"):
            raise ValueError("path: HTTP paths start with '/'")
        return self

    def allowed_stores(self) -> list[str]:
        return list(dict.fromkeys([*([self.store] if self.store else []), *self.stores]))

    def input_stores(self, all_stores: list[str]) -> list[str]:
        return list(dict.fromkeys([*self.allowed_stores(), *([self.raw_store] if self.raw_store else [])]))


SOURCE_TYPES: dict[str, type[_Source]] = {
    "folder": FolderSourceConfig,
    "s3-sqs": SqsSourceConfig,
    "s3-amqp": AmqpEventSourceConfig,
    "s3-webhook": WebhookSourceConfig,
    "minio-listen": ListenSourceConfig,
    "reconcile": ReconcileSourceConfig,
    "amqp-jobs": AmqpJobsSourceConfig,
    "dms-webhook": DmsWebhookSourceConfig,
}

SourceConfig = Annotated[
    FolderSourceConfig | SqsSourceConfig | AmqpEventSourceConfig | WebhookSourceConfig
    | ListenSourceConfig | ReconcileSourceConfig | AmqpJobsSourceConfig | DmsWebhookSourceConfig,
    Field(discriminator="type"),
]


class _OneSource(StrictModel):
    sources: list[SourceConfig]


def parse_source(data: Any) -> Any:
    """One source's options, validated on their own (tools and tests; the daemon gets
    them validated inside Settings). Errors name ``sources[<name>].<key>``."""
    if isinstance(data, _Source):
        return data
    from facewarden.config.errors import format_validation_error
    from facewarden.errors import ConfigError

    raw = {"sources": [dict(data)]}
    try:
        return _OneSource.model_validate(raw).sources[0]
    except ValidationError as exc:
        raise ConfigError("config.invalid", format_validation_error(exc, _OneSource, raw, origin="source")) from None
