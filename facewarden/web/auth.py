"""API keys with scopes, stored hashed in the state dir.

A key is ``fwk_<id>_<secret>``; only its SHA-256 is kept (``<state>/api/keys.json``, mode
0600), so a copy of the state dir does not hand out working keys. The id lets us find the
entry without comparing against every hash and names the key in audit records and logs;
the secret part is compared in constant time. ``admin`` implies every other scope.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facewarden.errors import UsageError

SCOPES = ("anonymize", "idphoto", "enroll", "checkin", "admin")
PREFIX = "fwk_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    created: float

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "created": self.created}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """The keys file; re-read when it changes so `facewarden apikeys create` takes effect
    in a running daemon without a restart."""

    def __init__(self, state_dir: Path | str):
        self.path = Path(state_dir) / "api" / "keys.json"
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, dict[str, Any]]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        with self._lock:
            if self._cache is None or self._cache[0] != mtime:
                self._cache = (mtime, json.loads(self.path.read_text() or "{}"))
            return self._cache[1]

    def _save(self, keys: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(keys, fh, indent=2)
        os.replace(tmp, self.path)

    def create(self, name: str, scopes: list[str] | tuple[str, ...]) -> tuple[str, ApiKey]:
        """Returns the token (shown once, never stored) and the key's public facts."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise UsageError("apikey.bad_scope", f"scopes must be some of {', '.join(SCOPES)} (got {bad or 'none'})")
        if not name.strip():
            raise UsageError("apikey.bad_name", "give the key a name (who or what uses it)")
        key_id = secrets.token_hex(6)
        token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        keys = dict(self._load())
        keys[key_id] = {"name": name, "scopes": sorted(set(scopes)), "sha256": _digest(token), "created": time.time()}
        self._save(keys)
        return token, self._entry(key_id, keys[key_id])

    def revoke(self, key_id: str) -> bool:
        keys = dict(self._load())
        if keys.pop(key_id, None) is None:
            return False
        self._save(keys)
        return True

    def list(self) -> list[ApiKey]:
        return [self._entry(k, v) for k, v in sorted(self._load().items())]

    def check(self, token: str) -> ApiKey | None:
        if not token.startswith(PREFIX):
            return None
        key_id, _, secret = token[len(PREFIX):].partition("_")
        entry = self._load().get(key_id)
        if entry is None or not secret or not hmac.compare_digest(entry["sha256"], _digest(token)):
            return None
        return self._entry(key_id, entry)

    @staticmethod
    def _entry(key_id: str, entry: dict[str, Any]) -> ApiKey:
        return ApiKey(key_id, entry["name"], tuple(entry["scopes"]), entry["created"])
