"""An S3 bucket (AWS, MinIO, any S3-compatible server) as a Store.

A PUT in S3 is atomic (a reader sees the old object, the new one, or none), so the
Store contract holds without the temp-file dance the local store needs. Credentials come
from boto3's standard chain (environment, shared profile, instance/task role) so that no
secret has to live in our config file; ``profile`` only picks a named profile.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import structlog
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from facewarden.errors import StoreError, StoreRefused, StoreUnavailable
from facewarden.storage.base import STORES, ObjectInfo, Store, join_key, safe_key

log = structlog.get_logger(__name__)

#: AWS caps user metadata (names + values, as sent) at 2 KB per object.
MAX_METADATA_BYTES = 2048
_META_NAME_OK = set(string.ascii_lowercase + string.digits + "-_")
#: Printable ASCII minus '%', which we use as the escape character.
_META_VALUE_SAFE = "".join(c for c in map(chr, range(0x20, 0x7F)) if c not in "%")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}
#: S3 error codes that mean "the service is busy or failing, not your request".
RETRYABLE_CODES = frozenset({
    "RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "InternalError",
    "ServiceUnavailable", "RequestTimeoutException", "PriorRequestNotComplete",
    "ProvisionedThroughputExceededException", "OperationAborted", "XMinioServerNotInitialized",
    "XMinioStorageFull", "XMinioReadQuorum", "XMinioWriteQuorum",
})
#: Transport failures: the endpoint refused, reset, stalled or cut the connection.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    BotoConnectionError, EndpointConnectionError, ConnectionClosedError, ReadTimeoutError,
    HTTPClientError, IncompleteReadError, ResponseStreamingError, ConnectionError, TimeoutError,
    # Credentials come from a chain that may include a metadata service or SSO endpoint:
    # "none found" is what an unreachable provider looks like too.
    NoCredentialsError, CredentialRetrievalError,
)


def classify(exc: BaseException) -> bool:
    """True when waiting can help: transport failures, timeouts, 5xx, 408/429 and
    throttling codes. Everything else (4xx: access denied, no such bucket, bad request,
    invalid parameters) is final."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return _code(exc) in RETRYABLE_CODES or status >= 500 or status in (408, 429)
    return isinstance(exc, TRANSPORT_ERRORS)


def _meta_name(name: str) -> str:
    """S3 lower-cases names and HTTP forbids most punctuation in header names."""
    out = "".join(c if c in _META_NAME_OK else "-" for c in name.lower())
    return out.strip("-") or "x"


def _meta_value(value: Any) -> str:
    """Header values must be ASCII: percent-encode the rest (readable with unquote)."""
    return quote(str(value), safe=_META_VALUE_SAFE)


def encode_metadata(metadata: dict[str, Any] | None) -> dict[str, str]:
    """Audit summaries as x-amz-meta-* pairs, ASCII-safe and inside the 2 KB limit.

    The full audit record is stored beside the object, so dropping an entry that does
    not fit loses nothing; we drop the largest entries first and say so in ``fw-truncated``.
    """
    if not metadata:
        return {}
    out = {_meta_name(k): _meta_value(v) for k, v in metadata.items()}

    def size(d: dict[str, str]) -> int:
        return sum(len(k) + len(v) for k, v in d.items())

    dropped: list[str] = []
    while out and size(out) + (len("fw-truncated") + 64 if dropped else 0) > MAX_METADATA_BYTES:
        biggest = max(out, key=lambda k: len(out[k]))
        dropped.append(biggest)
        del out[biggest]
    if dropped:
        out["fw-truncated"] = _meta_value(",".join(sorted(dropped)))[:64]
        log.warning("s3.metadata_truncated", dropped=sorted(dropped))
    return out


class ObjectNotFound(StoreError, FileNotFoundError):
    """A missing object: caught by ``except FileNotFoundError`` like LocalStore's, and
    carrying a reason code like every other store error. Never retryable."""

    code = "store.not_found"
    retryable = False
    infrastructure = False


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(Store):
    """One bucket (and an optional key prefix inside it) under a configured name.

    Keys given to and returned by this store are relative to ``prefix``; the prefix is
    applied and removed here so that the rest of the daemon never sees it.
    """

    def __init__(self, name: str, cfg: Any, *, client: Any = None) -> None:
        self.name = name
        self.bucket: str = cfg.bucket
        self.prefix: str = cfg.prefix.strip("/")
        if self.prefix:
            safe_key(self.prefix)
        self.endpoint_url: str | None = cfg.endpoint_url
        self.quarantine_prefix: str = getattr(cfg, "quarantine_prefix", "quarantine/")
        self._sse: str | None = cfg.sse
        self._kms_key_id: str | None = cfg.kms_key_id
        if client is None:
            session = boto3.session.Session(profile_name=cfg.profile, region_name=cfg.region)
            client = session.client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                verify=getattr(cfg, "verify", True),
                config=BotoConfig(
                    s3={"addressing_style": getattr(cfg, "addressing_style", "auto")},
                    connect_timeout=getattr(cfg, "connect_timeout", 10.0),
                    read_timeout=getattr(cfg, "read_timeout", 60.0),
                    retries={"mode": "standard",
                             "max_attempts": getattr(cfg, "max_attempts", 5)},
                ),
            )
        self.client = client
        #: Keys per LIST request (S3's maximum is 1000).
        self.page_size = 1000
        #: Files above this size go up as multipart uploads (``put_file``), in parts of this size.
        self.multipart_threshold = 16 * 1024 * 1024

    # -- keys ---------------------------------------------------------------------------
    def full_key(self, key: str) -> str:
        """Store key -> bucket key (validated)."""
        return join_key(self.prefix, safe_key(key))

    def relative_key(self, bucket_key: str) -> str | None:
        """Bucket key -> store key, or None when the key lies outside this store's prefix."""
        if not self.prefix:
            return bucket_key
        head = self.prefix + "/"
        return bucket_key[len(head):] if bucket_key.startswith(head) else None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    # -- operations ---------------------------------------------------------------------
    def _fail(self, op: str, key: str | None, exc: Exception) -> StoreError:
        code = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        where = self.uri(key) if key else f"s3://{self.bucket}"
        what = f"S3 {op} of {where} failed ({code})"
        if classify(exc):
            return StoreUnavailable("store.unavailable", what, store=self.name)
        return StoreRefused("store.refused", what, store=self.name)

    def get(self, key: str) -> bytes:
        bkey = self.full_key(key)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=bkey)
            return resp["Body"].read()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise ObjectNotFound(message=f"{self.uri(key)} does not exist") from exc
            raise self._fail("GET", key, exc) from exc
        except (BotoCoreError, *TRANSPORT_ERRORS) as exc:
            raise self._fail("GET", key, exc) from exc
        except OSError as exc:  # urllib3 errors while streaming the body
            raise self._fail("GET", key, exc) from exc

    def probe(self, client: Any = None) -> None:
        """HEAD of the bucket: a light check for readiness and the breaker's half-open
        test (``client`` may be one with short timeouts and no retries)."""
        try:
            (client or self.client).head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError, *TRANSPORT_ERRORS, OSError) as exc:
            raise self._fail("HEAD", None, exc) from exc

    def probe_client(self, timeout: float = 2.0) -> Any:
        """A client for probes: one try, short timeouts, so a stalled endpoint answers
        "down" in ``timeout`` seconds instead of after minutes of retries."""
        cfg = self.client.meta.config
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.client.meta.region_name,
            config=BotoConfig(s3=cfg.s3, connect_timeout=timeout, read_timeout=timeout,
                              retries={"mode": "standard", "total_max_attempts": 1}))

    def stat(self, key: str) -> ObjectInfo | None:
        bkey = self.full_key(key)
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=bkey)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise self._fail("HEAD", key, exc) from exc
        except (BotoCoreError, *TRANSPORT_ERRORS) as exc:
            raise self._fail("HEAD", key, exc) from exc
        return ObjectInfo(key=safe_key(key), size=int(resp.get("ContentLength", 0)),
                          version=str(resp.get("ETag", "")).strip('"'))

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None:
        bkey = self.full_key(key)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": bkey, "Body": data,
                                "ContentType": content_type}
        meta = encode_metadata(metadata)
        if meta:
            args["Metadata"] = meta
        if self._sse:
            args["ServerSideEncryption"] = self._sse
            if self._sse == "aws:kms" and self._kms_key_id:
                args["SSEKMSKeyId"] = self._kms_key_id
        try:
            self.client.put_object(**args)
        except (ClientError, BotoCoreError, *TRANSPORT_ERRORS) as exc:
            raise self._fail("PUT", key, exc) from exc

    def get_file(self, key: str, dest: Path) -> None:
        """Streams the object into a local file (videos do not fit in memory)."""
        try:
            with open(dest, "wb") as fh:
                self.client.download_fileobj(self.bucket, self.full_key(key), fh)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND or _code(exc) == "404":
                raise ObjectNotFound(message=f"{self.uri(key)} does not exist") from exc
            raise self._fail("GET", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("GET", key, exc) from exc

    def put_file(self, key: str, src: Path, *, content_type: str = "application/octet-stream",
                 metadata: dict[str, str] | None = None) -> None:
        """Uploads a local file; above ``multipart_threshold`` as a multipart upload, which S3
        makes visible only when it completes, so no partial object is ever readable."""
        from boto3.s3.transfer import TransferConfig

        extra: dict[str, Any] = {"ContentType": content_type}
        meta = encode_metadata(metadata)
        if meta:
            extra["Metadata"] = meta
        if self._sse:
            extra["ServerSideEncryption"] = self._sse
            if self._sse == "aws:kms" and self._kms_key_id:
                extra["SSEKMSKeyId"] = self._kms_key_id
        config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                multipart_chunksize=max(self.multipart_threshold, 8 * 1024 * 1024), use_threads=False)
        try:
            self.client.upload_file(str(src), self.bucket, self.full_key(key), ExtraArgs=extra, Config=config)
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise self._fail("PUT", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return
            raise self._fail("DELETE", key, exc) from exc
        except (BotoCoreError, *TRANSPORT_ERRORS) as exc:
            raise self._fail("DELETE", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (store-relative), page by page, lazily.

        Keys that would not pass ``safe_key`` (someone wrote ``a/../b`` straight into the
        bucket) are logged and skipped: no caller can use them safely.
        """
        base = self.prefix + "/" if self.prefix else ""
        sub = prefix.lstrip("/")
        if sub:
            # a prefix may end in a partial name ("2024-"), so only its directories are checked
            head, _, _ = sub.rpartition("/")
            if head:
                safe_key(head)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + sub,
                                          PaginationConfig={"PageSize": self.page_size}):
                for obj in page.get("Contents", []):
                    bkey = obj["Key"]
                    if bkey.endswith("/"):
                        continue  # "folder" marker objects made by consoles
                    rel = self.relative_key(bkey)
                    if rel is None:
                        continue
                    try:
                        rel = safe_key(rel)
                    except Exception:
                        log.warning("s3.unsafe_key_skipped", store=self.name, bucket=self.bucket)
                        continue
                    yield ObjectInfo(key=rel, size=int(obj.get("Size", 0)),
                                     version=str(obj.get("ETag", "")).strip('"'))
        except (ClientError, BotoCoreError, *TRANSPORT_ERRORS) as exc:
            raise self._fail("LIST", prefix or None, exc) from exc

    def __repr__(self) -> str:
        return f"S3Store({self.name!r}, s3://{self.bucket}/{self.prefix})"


STORES.register("s3", S3Store)
