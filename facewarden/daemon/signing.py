"""HMAC-SHA256 request signatures (DMS webhooks and GET /jobs/{id}).

A client sends ``X-Facewarden-Timestamp: <unix seconds>`` and
``X-Facewarden-Signature: sha256=<hex(HMAC(secret, f"{timestamp}." + signed))>``; for a
POST ``signed`` is the raw body, for ``GET /jobs/{id}`` it is ``GET /jobs/{id}`` (method,
space, path), so a signature for one job cannot read another. Requests outside the replay
window are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

HDR_TIMESTAMP = "x-facewarden-timestamp"
HDR_SIGNATURE = "x-facewarden-signature"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class BadSignature(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def verify(headers: Mapping[str, str], signed: bytes, secrets: Iterable[bytes],
           window: float = 300.0, now: float | None = None) -> str:
    """Returns the matching signature, or raises BadSignature (code, sentence)."""
    ts = headers.get(HDR_TIMESTAMP, "")
    sig = headers.get(HDR_SIGNATURE, "")
    if not ts or not sig:
        raise BadSignature("auth.missing", "missing X-Facewarden-Timestamp or -Signature header")
    try:
        when = int(ts)
    except ValueError:
        raise BadSignature("auth.bad_timestamp", "the timestamp is not unix seconds") from None
    now = time.time() if now is None else now
    if abs(now - when) > window:
        raise BadSignature("auth.stale", "the timestamp is outside the replay window")
    given = sig.strip().lower().encode()
    for secret in secrets:
        expected = sign(secret, ts, signed)
        if hmac.compare_digest(expected.encode(), given):
            return expected
    raise BadSignature("auth.bad_signature", "the signature does not match")
