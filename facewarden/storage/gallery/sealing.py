"""Sealing gallery values: the gallery key, per-subject data keys, AES-256-GCM.

Two levels, so that erasure can be crypto-shredding:

- the **gallery key** (a file on each host, never in a database) wraps each subject's
  **data key** and seals the gallery's key-check value;
- a subject's **data key** seals its name, consent, photo keys and embedding vectors.

Erasing a subject destroys its wrapped data key, then deletes its rows. Where the wrapped
keys live decides what the erasure reaches: PostgreSQL keeps them in a database of their
own, so a dump of the gallery taken before an erasure holds rows whose key no longer
exists anywhere (tests/test_gallery_postgres.py replays such a dump).

Every value is bound to its row by the AEAD's associated data (a blob cannot be moved to
another subject). Values sealed directly by the gallery key (``FWG1``, galleries written
before data keys existed) still open; new ones are ``FWG2`` under a data key.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from facewarden.storage.gallery.base import GalleryError

LEGACY_MAGIC = b"FWG1"
MAGIC = b"FWG2"
KEY_CHECK = b"facewarden-gallery-key-check"


def generate_key_file(path: Path) -> None:
    """Writes a new random 256-bit key (base64, one line), readable by the owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")


def read_key_file(path: Path) -> bytes:
    """A key file holds 32 raw bytes, or 64 hex digits, or base64 of 32 bytes."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise GalleryError("gallery.key_unreadable", f"cannot read the gallery key file {path}: "
                           f"{exc.strerror or exc}") from exc
    if len(raw) == 32:
        return raw
    text = raw.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(key) == 32:
            return key
    raise GalleryError("gallery.key_invalid", f"the key file {path} does not hold a 256-bit key "
                       "(32 bytes raw, 64 hex digits or base64); create one with `facewarden subjects keygen`")


def _aead(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class DataKey:
    """One subject's data key (``kid`` names it in the key table)."""

    __slots__ = ("_aead", "kid")

    def __init__(self, kid: str, key: bytes):
        self.kid = kid
        self._aead = _aead(key)


class Keyring:
    """Seals and opens values. Without a gallery key (SQLite only) values stay plain."""

    def __init__(self, gallery_key: bytes | None):
        self.enabled = gallery_key is not None
        self._master = _aead(gallery_key) if gallery_key is not None else None

    # -- data keys -------------------------------------------------------------------------
    def new_data_key(self) -> tuple[DataKey, bytes]:
        """A fresh data key and its wrapped form (what the key table stores)."""
        assert self._master is not None
        kid = secrets.token_hex(16)
        key = secrets.token_bytes(32)
        nonce = secrets.token_bytes(12)
        return DataKey(kid, key), MAGIC + nonce + self._master.encrypt(nonce, key, f"dek|{kid}".encode())

    def unwrap(self, kid: str, wrapped: bytes) -> DataKey:
        assert self._master is not None
        from cryptography.exceptions import InvalidTag

        wrapped = bytes(wrapped)
        try:
            return DataKey(kid, self._master.decrypt(wrapped[4:16], wrapped[16:], f"dek|{kid}".encode()))
        except InvalidTag as exc:
            raise GalleryError("gallery.key_invalid", "a subject's data key does not open with this gallery "
                               "key (wrong key, or the key table was tampered with)") from exc

    # -- values ----------------------------------------------------------------------------
    def seal(self, data: bytes, aad: str, dek: DataKey | None) -> bytes:
        """With ``dek`` None (a plain gallery, or a subject from before data keys) the
        gallery key itself seals, as it always did."""
        if not self.enabled:
            return data
        nonce = secrets.token_bytes(12)
        if dek is None:
            assert self._master is not None
            return LEGACY_MAGIC + nonce + self._master.encrypt(nonce, data, aad.encode())
        return MAGIC + nonce + dek._aead.encrypt(nonce, data, aad.encode())

    def open(self, blob: bytes, aad: str, dek: DataKey | None) -> bytes:
        if not self.enabled:
            return bytes(blob)
        from cryptography.exceptions import InvalidTag

        blob = bytes(blob)
        magic = blob[:4]
        if magic == LEGACY_MAGIC:
            aead = self._master
        elif magic == MAGIC and dek is not None:
            aead = dek._aead
        elif magic == MAGIC:
            raise GalleryError("gallery.key_erased", "this value's data key no longer exists (the subject "
                               "was erased)")
        else:
            raise GalleryError("gallery.corrupt", "a gallery value is not sealed although the gallery is encrypted")
        try:
            return aead.decrypt(blob[4:16], blob[16:], aad.encode())
        except InvalidTag as exc:
            raise GalleryError("gallery.key_invalid", "a gallery value does not open with this key "
                               "(wrong key, or the value was tampered with)") from exc

    def seal_text(self, text: str | None, aad: str, dek: DataKey | None) -> bytes | None:
        return None if text is None else self.seal(text.encode("utf-8"), aad, dek)

    def open_text(self, blob: bytes | None, aad: str, dek: DataKey | None) -> str | None:
        return None if blob is None else self.open(blob, aad, dek).decode("utf-8")

    # -- the key check -----------------------------------------------------------------------
    def check_value(self) -> str:
        return base64.b64encode(self.seal(KEY_CHECK, "key-check", None)).decode()

    def verify_check(self, value: str) -> bool:
        try:
            return self.open(base64.b64decode(value), "key-check", None) == KEY_CHECK
        except GalleryError:
            return False


def vec_aad(subject: str, backend: str, photo_sha256: str) -> str:
    return f"vec|{subject}|{backend}|{photo_sha256}"


def name_aad(subject: str) -> str:
    return f"name|{subject}"


def consent_aad(subject: str) -> str:
    return f"consent|{subject}"


def key_aad(subject: str, photo_sha256: str) -> str:
    return f"key|{subject}|{photo_sha256}"
