"""The settings schema. Every option is documented in config/facewarden.example.toml.

Unknown keys are errors (a typo must not silently fall back to a default), and every
cross-reference (a route naming a store or source) is checked here, at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from facewarden.config.overlap import find_overlaps
from facewarden.config.paths import absolute, default_models_dir, default_state_dir
from facewarden.config.secrets import SecretUrl, StrictModel
from facewarden.config.sources import (  # noqa: F401  (re-exported: the schema is one place)
    DEFAULT_IGNORE,
    SOURCE_TYPES,
    AmqpEventSourceConfig,
    AmqpJobsSourceConfig,
    DmsWebhookSourceConfig,
    FolderSourceConfig,
    ListenSourceConfig,
    ReconcileSourceConfig,
    SourceConfig,
    SqsSourceConfig,
    WebhookSourceConfig,
)

#: A path made absolute when validated (relative ones in a config file were already
#: resolved against the file's folder by the loader; flags and env are relative to cwd).
AbsPath = Annotated[Path, AfterValidator(absolute)]
_Strict = StrictModel


class LocalStoreConfig(_Strict):
    type: Literal["local"] = "local"
    root: AbsPath
    #: fsync files and their directory on every write (durability across power loss).
    fsync: bool = True


class S3StoreConfig(_Strict):
    type: Literal["s3"]
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    #: Named profile from ~/.aws; otherwise the standard chain (env, instance role).
    profile: str | None = None
    #: Server-side encryption: "AES256" or "aws:kms" (then kms_key_id).
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    #: Name of the quarantine prefix used when this store is an input.
    quarantine_prefix: str = "quarantine/"
    #: "path" for MinIO and most S3-compatible servers behind a plain host:port; "auto"
    #: lets botocore choose (virtual-host style on AWS).
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    #: Seconds to wait for a connection / a response before botocore retries.
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    #: Total attempts per request (botocore "standard" retry mode: throttling, 5xx, resets).
    max_attempts: int = Field(5, ge=1)
    #: Verify TLS certificates; a path names a CA bundle (self-hosted MinIO with its own CA).
    verify: bool | str = True


StoreConfig = Annotated[LocalStoreConfig | S3StoreConfig, Field(discriminator="type")]


class RouteConfig(_Strict):
    #: Name of the source this route listens to.
    source: str
    #: Glob on the object key (fnmatch, '*' crosses '/'); first matching route wins.
    match: str = "*"
    handler: str = "anonymize"
    params: dict[str, Any] = Field(default_factory=dict)
    target: str = "outgoing"
    #: Prefix under which results are written in the target store.
    prefix: str = ""
    #: Leading part of the input key to drop before adding `prefix` (e.g. "idphoto/blue/").
    strip_prefix: str = ""
    #: What happens to the original after its result and audit record are durable.
    originals: Literal["keep", "move", "delete"] = "keep"
    #: Where `move` puts originals: a store name ("processed" = STATE/processed by default).
    processed_store: str = "processed"
    processed_prefix: str = ""
    #: Where inputs that produced no result go, with their audit record.
    quarantine_store: str = "quarantine"
    #: Let an event's hints (e.g. a RabbitMQ job message) choose handler, params and target.
    allow_overrides: bool = False
    #: Which inputs this route takes, by name: "video" (.mp4 .m4v .mov .qt .mkv .webm .avi),
    #: "image" (everything else) or "any". Lets one source send videos and photos to
    #: different handlers or params.
    media: Literal["any", "image", "video"] = "any"


class RabbitMQConfig(_Strict):
    """The scale-out queue (see facewarden/daemon/queues/rabbitmq.py and docs/config-amqp.toml)."""

    #: Broker URL; its password is never shown (prefer url_file / url_credential).
    url: SecretUrl = "amqp://guest:guest@127.0.0.1:5672/%2F"
    #: Durable quorum queue holding jobs; retries wait in `<queue>.delay.<ms>` queues.
    queue: str = "facewarden.jobs"
    exchange: str = "facewarden"
    dead_letter_exchange: str = "facewarden.dlx"
    #: Queue that collects poison jobs (delivery limit hit, undecodable, dead-lettered);
    #: empty = "<queue>.dead".
    dead_letter_queue: str = ""
    results_exchange: str = "facewarden.results"
    #: Publish results (audit summary, output keys) for every job, not only for jobs that
    #: carry a reply-to or correlation id.
    publish_results: bool = False
    prefetch: int = Field(1, ge=1)
    #: Broker-side redeliveries (worker crashed or lost its connection) before the job is
    #: dead-lettered: catches inputs that kill the worker process.
    delivery_limit: int = Field(5, ge=1)
    heartbeat: int = Field(30, ge=0)
    #: How long put() keeps trying (reconnecting) before it gives up with an error.
    publish_timeout: float = Field(60.0, gt=0)
    #: Upper bound of the exponential reconnect backoff.
    reconnect_max_delay: float = Field(30.0, gt=0)
    #: Days a dedup string is remembered (local SQLite in the state dir).
    dedup_days: float = Field(7.0, gt=0)


class QueueConfig(_Strict):
    backend: Literal["sqlite", "rabbitmq"] = "sqlite"
    rabbitmq: RabbitMQConfig = RabbitMQConfig()


class WorkersConfig(_Strict):
    #: Worker processes; 0 = one per CPU core.
    count: int = Field(0, ge=0)
    #: A job running longer than this is killed, retried, and finally quarantined.
    job_timeout: float = Field(120.0, gt=0)
    #: Deliveries per job before it is quarantined (covers crashing workers too).
    max_attempts: int = Field(3, ge=1)
    backoff_base: float = Field(1.0, gt=0)
    backoff_max: float = Field(300.0, gt=0)
    #: Seconds a job waits out a store or broker outage (retrying with backoff) before it
    #: is quarantined; quarantined for an outage, it is still re-driven when the store is back.
    retry_budget: float = Field(6 * 3600.0, gt=0)
    #: Infrastructure failures in a row on one store before workers stop taking jobs for it.
    breaker_threshold: int = Field(3, ge=1)

    def resolved_count(self) -> int:
        return self.count or (os.cpu_count() or 1)


class LimitsConfig(_Strict):
    #: Inputs above this many pixels are rejected from the header (decompression bombs).
    max_pixels: int = Field(100_000_000, gt=0)
    #: Inputs above this many bytes are rejected before they are read.
    max_bytes: int = Field(200 * 1024 * 1024, gt=0)
    min_side: int = Field(16, ge=1)


class VideoConfig(_Strict):
    """Per-job budget for videos (facewarden/video/probe.py ``VideoLimits``); each limit has
    its own rejection code (video.too_large, video.too_long, video.timeout)."""

    #: Videos above this many bytes are rejected before they are read (photos: limits.max_bytes).
    max_bytes: int = Field(8 * 1024**3, gt=0)
    max_duration_s: float = Field(3600.0, gt=0)
    max_frame_pixels: int = Field(4096 * 2304, gt=0)
    max_frames: int = Field(250_000, gt=0)
    max_total_pixels: int = Field(1920 * 1080 * 30 * 3600, gt=0)
    #: A read of the input that makes no progress for this long aborts the job.
    read_timeout_s: float = Field(30.0, gt=0)
    #: Wall-clock budget of one video job. Note workers.job_timeout also applies: raise it
    #: for long videos.
    max_seconds: float = Field(6 * 3600.0, gt=0)
    #: Where inputs and outputs are staged while a video is processed; "" = STATE/video-work.
    work_dir: Path | None = None


class HttpConfig(_Strict):
    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)
    max_body_bytes: int = Field(50 * 1024 * 1024, gt=0)
    #: HMAC key for signed GET /jobs/{id} requests (see docs/job-message.md); none = only
    #: dms-webhook sources' secrets are accepted, and without those the endpoint answers 403.
    job_status_secret: SecretStr | None = None
    #: The HTTP API (/api/v1) and web console (/); keys from `facewarden apikeys create`.
    api: bool = True
    #: Keep API uploads (and sync results) in the state dir after the call instead of deleting them.
    api_keep_uploads: bool = False
    #: Origins allowed by CORS on /api/v1; empty = CORS off.
    cors_origins: list[str] = Field(default_factory=list)
    #: Files in a /api/v1/batch ZIP, and their total unpacked size (zip bombs).
    batch_max_files: int = Field(500, gt=0)
    batch_max_unpacked_bytes: int = Field(1024 * 1024 * 1024, gt=0)


class LogConfig(_Strict):
    #: auto: coloured console on a TTY, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class GalleryConfig(_Strict):
    #: Key file for encryption of the face gallery at rest; none = unencrypted (SQLite only).
    key_file: AbsPath | None = None
    #: PostgreSQL gallery shared by every host (``postgresql://user@host:5432/db``, no
    #: password in it); none = the embedded SQLite file STATE/gallery.db.
    url: str | None = None
    #: File holding the PostgreSQL password (first line); none = no password (trust, .pgpass).
    password_file: AbsPath | None = None
    #: Database of the per-subject data keys (PostgreSQL only); none = the gallery's
    #: database name + "_keys" on the same server. Kept apart so that a dump of the gallery
    #: holds no key: erasing a subject's key makes its rows in old dumps unreadable.
    keys_url: str | None = None
    #: Seconds between full consistency checks of the in-memory index (PostgreSQL; changes
    #: normally arrive within milliseconds by LISTEN/NOTIFY).
    refresh_interval: float = Field(30.0, gt=0)
    #: How often the daemon purges subjects past their retention date (seconds).
    purge_interval: float = Field(3600.0, gt=0)

    @field_validator("url", "keys_url")
    @classmethod
    def _postgres_url_without_password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if parts.password:
            raise ValueError("must not contain a password: put it in gallery.password_file")
        return value


class Settings(_Strict):
    #: Default: $XDG_STATE_HOME/facewarden (~/.local/state/facewarden).
    state_dir: AbsPath = Field(default_factory=default_state_dir)
    #: Default: $XDG_DATA_HOME/facewarden/models (~/.local/share/facewarden/models).
    models_dir: AbsPath = Field(default_factory=default_models_dir)
    stores: dict[str, StoreConfig] = Field(default_factory=dict)
    sources: list[SourceConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    queue: QueueConfig = QueueConfig()
    workers: WorkersConfig = WorkersConfig()
    limits: LimitsConfig = LimitsConfig()
    video: VideoConfig = VideoConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    gallery: GalleryConfig = GalleryConfig()

    @field_validator("stores", mode="before")
    @classmethod
    def _local_default_type(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({**v, "type": "local"} if isinstance(v, dict) and "type" not in v else v)
                    for k, v in value.items()}
        return value

    @field_validator("sources", mode="before")
    @classmethod
    def _folder_default_type(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [({**v, "type": "folder"} if isinstance(v, dict) and "type" not in v else v) for v in value]
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        all_stores = self.all_stores()
        stores = set(all_stores)
        names = [s.name for s in self.sources]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"sources: duplicate source name(s) {sorted(dupes)}")
        for src in self.sources:
            for field in ("store", "stores", "raw_store"):
                value = getattr(src, field, None)
                for store in [value] if isinstance(value, str) else value or []:
                    if store not in stores:
                        raise ValueError(f"sources[{src.name}].{field}: no store named {store!r} "
                                         f"(known: {sorted(stores)})")
            if src.type == "folder" and all_stores[src.store].type != "local":
                raise ValueError(f"sources[{src.name}].store: a folder source needs a local store, "
                                 f"{src.store!r} is {all_stores[src.store].type}")
            if src.type in ("s3-sqs", "s3-amqp", "s3-webhook", "minio-listen"):
                for store in src.watched_stores():
                    if all_stores[store].type != "s3":
                        raise ValueError(f"sources[{src.name}].stores: store {store!r} is not an S3 store")
        for i, route in enumerate(self.routes):
            if route.source not in names:
                raise ValueError(f"routes[{i}].source: no source named {route.source!r} (known: {names})")
            for field in ("target", "processed_store", "quarantine_store"):
                value = getattr(route, field)
                if value not in stores:
                    raise ValueError(f"routes[{i}].{field}: no store named {value!r} (known: {sorted(stores)})")
        problems = find_overlaps(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def all_stores(self) -> dict[str, StoreConfig]:
        """Configured stores plus the built-in local ones in the state directory."""
        builtin: dict[str, StoreConfig] = {
            "quarantine": LocalStoreConfig(root=self.state_dir / "quarantine"),
            "processed": LocalStoreConfig(root=self.state_dir / "processed"),
            # The HTTP API's inputs and results (facewarden/web), so worker processes can run its jobs.
            "api-uploads": LocalStoreConfig(root=self.state_dir / "api-uploads"),
            "api-results": LocalStoreConfig(root=self.state_dir / "api-results"),
        }
        return {**builtin, **self.stores}
