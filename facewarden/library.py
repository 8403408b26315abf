"""facewarden as a Python library: the handlers without a daemon, queue or store.

    import facewarden
    result = facewarden.anonymize("group.jpg", mode="pixelate")
    result.save("group-anonymized.jpg")

Each call takes a path, bytes or an RGB ``numpy`` array plus the handler's params (the same
names, validation and defaults as jobs: ``facewarden handlers`` lists them), and returns a
``Result`` with the encoded outputs and the facts the audit record would carry. Models load
once per ``Facewarden`` session, lazily; the module-level functions share one default
session. With ``state_dir`` the session writes the same hash-chained audit record as the
daemon (and enroll/verify use that state's gallery), so ``facewarden audit verify --state``
covers library calls too.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facewarden.errors import InputRejected

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray


@dataclass(slots=True)
class Result:
    """What a handler made of one input. ``outputs`` are (extension, content type, bytes)
    in the handler's order; ``data`` is the first. Facts never hold embeddings."""

    handler: str
    params: dict[str, Any]
    input_sha256: str
    outputs: list[tuple[str, str, bytes]]
    facts: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None

    @property
    def data(self) -> bytes:
        if not self.outputs:
            raise ValueError(f"the {self.handler} handler wrote no output for this input")
        return self.outputs[0][2]

    @property
    def extension(self) -> str:
        return self.outputs[0][0]

    @property
    def faces(self) -> int | None:
        value = self.facts.get("faces")
        return int(value) if isinstance(value, int | float) else None

    def image(self) -> np.ndarray:
        """The first output decoded to RGB pixels (for image outputs)."""
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as img:
            return np.asarray(img.convert("RGB"))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Writes the first output; refuses to replace an existing file unless asked, so a
        result never lands on an original by accident."""
        target = Path(path)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        target.write_bytes(self.data)
        return target


class Facewarden:
    """A session: models loaded once and reused; optionally an audit log and gallery."""

    def __init__(self, *, models_dir: str | os.PathLike[str] | None = None,
                 state_dir: str | os.PathLike[str] | None = None,
                 gallery_key_file: str | os.PathLike[str] | None = None) -> None:
        from facewarden.config import load_settings

        overrides: dict[str, Any] = {}
        if models_dir is not None:
            overrides["models_dir"] = Path(models_dir)
        if state_dir is not None:
            overrides["state_dir"] = Path(state_dir)
        if gallery_key_file is not None:
            overrides["gallery"] = {"key_file": Path(gallery_key_file)}
        self.settings = load_settings(None, overrides=overrides)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._ctx: Any = None
        self._audit: Any = None
        self._lock = threading.Lock()

    # -- the handlers --------------------------------------------------------------------
    def anonymize(self, image: ImageInput, **params: Any) -> Result:
        return self.run("anonymize", image, params)

    def idphoto(self, image: ImageInput, **params: Any) -> Result:
        return self.run("idphoto", image, params)

    def enroll(self, image: ImageInput, subject: str, **params: Any) -> Result:
        return self.run("enroll", image, {**params, "subject": subject})

    def verify(self, image: ImageInput, **params: Any) -> Result:
        return self.run("verify", image, params)

    def run(self, handler_name: str, image: ImageInput, params: Mapping[str, Any] | None = None) -> Result:
        """Decodes with the daemon's safety checks, runs the handler, commits (enroll) and,
        with a state dir, appends the audit record. Raises ``InputRejected`` with a reason
        code for input that cannot be processed, like the daemon's quarantine reasons."""
        from facewarden.daemon.pipeline import idempotency_key
        from facewarden.handlers import base as handlers
        from facewarden.handlers import imageio

        started = time.perf_counter()
        data, name = _read(image)
        sha = hashlib.sha256(data).hexdigest()
        handler = handlers.get(handler_name)
        clean = handler.validate_params(dict(params or {}))
        decoded = imageio.decode(data, max_pixels=self.settings.limits.max_pixels,
                                 min_side=self.settings.limits.min_side)
        ctx = self._context()
        result = handler.run(decoded, clean, ctx)
        if isinstance(handler, handlers.CommittingHandler):
            if self.state_dir is None:
                raise InputRejected("library.no_state", f"{handler_name} changes the gallery: create the session "
                                    "with Facewarden(state_dir=...) so it has one")
            handler.commit(result, clean, ctx, input_sha256=sha, input_key=name)
        outputs = [(o.extension, o.content_type, o.data) for o in result.outputs]
        record = None
        if self.state_dir is not None:
            record = self._audit_log().append({
                "job_id": uuid.uuid4().hex, "handler": handler_name, "source": "library", "attempt": 1,
                "input": {"store": "library", "key": name, "sha256": sha, "size": len(data)},
                "params": clean, "idempotency_key": idempotency_key(sha, handler_name, clean),
                "outcome": "ok", "reason": None,
                "outputs": [{"store": None, "key": None, "sha256": hashlib.sha256(o.data).hexdigest(),
                             "size": len(o.data), "content_type": o.content_type} for o in result.outputs],
                "facts": result.facts, "models": [m.as_dict() for m in result.models],
                "image_notes": list(decoded.notes),
                "timings": {"total_ms": round((time.perf_counter() - started) * 1000, 1)},
            })
        return Result(handler_name, clean, sha, outputs, dict(result.facts), record)

    # -- resources -----------------------------------------------------------------------
    def _context(self) -> Any:
        from facewarden.handlers.base import HandlerContext

        with self._lock:
            if self._ctx is None:
                services = _Services(self) if self.state_dir is not None else {}
                self._ctx = HandlerContext(models_dir=Path(self.settings.models_dir), services=services)
            return self._ctx

    def _audit_log(self) -> Any:
        from facewarden.storage.audit import AuditLog

        with self._lock:
            if self._audit is None:
                assert self.state_dir is not None
                self.state_dir.mkdir(parents=True, exist_ok=True)
                self._audit = AuditLog(self.state_dir)
            return self._audit


class _Services(dict):  # type: ignore[type-arg]
    """The gallery, opened on first use (only enroll/verify need it)."""

    def __init__(self, session: Facewarden) -> None:
        super().__init__()
        self._session = session

    def __missing__(self, name: str) -> Any:
        if name != "gallery":
            raise KeyError(name)
        from facewarden.storage.gallery import open_configured

        self[name] = open_configured(self._session.settings)  # SQLite in the state dir, or PostgreSQL
        return self[name]


def _read(image: ImageInput) -> tuple[bytes, str]:
    if isinstance(image, np.ndarray):
        from PIL import Image

        arr = image
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise InputRejected("input.not_image", "an array input must be uint8 pixels, (H, W) or (H, W, 3|4) RGB")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")  # lossless: the array's pixels, through the same decoder
        return buf.getvalue(), "array.png"
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image), "bytes"
    path = Path(image)
    try:
        return path.read_bytes(), path.name
    except FileNotFoundError:
        raise InputRejected("input.missing", f"no such file: {path}") from None
    except IsADirectoryError:
        raise InputRejected("input.not_image", f"{path} is a folder, not an image") from None


_sessions: dict[str | None, Facewarden] = {}
_sessions_lock = threading.Lock()


def default_session(state_dir: str | os.PathLike[str] | None = None) -> Facewarden:
    """One shared session per state dir (None: no audit, no gallery), so models and the
    gallery open once per process whatever the number of calls."""
    key = str(Path(state_dir).resolve()) if state_dir is not None else None
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = Facewarden(state_dir=state_dir)
        return _sessions[key]


def anonymize(image: ImageInput, **params: Any) -> Result:
    """Every face found is obscured; params as the anonymize handler's (mode, shape, margin...)."""
    return default_session().anonymize(image, **params)


def idphoto(image: ImageInput, **params: Any) -> Result:
    """An ID photo: one face, person on a flat background, cropped to a size preset."""
    return default_session().idphoto(image, **params)


def enroll(image: ImageInput, subject: str, *, state_dir: str | os.PathLike[str], **params: Any) -> Result:
    """Adds the subject's face to the gallery in ``state_dir`` (audited there)."""
    return default_session(state_dir).enroll(image, subject, **params)


def verify(image: ImageInput, *, state_dir: str | os.PathLike[str], **params: Any) -> Result:
    """Matches every face against the gallery in ``state_dir``: a check-in record."""
    return default_session(state_dir).verify(image, **params)
