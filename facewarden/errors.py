"""Errors that carry a machine-readable reason code and a sentence a person can act on.

Every layer raises these so that the worker can decide, without string matching, whether
an input is permanently bad (reject or quarantine now) or whether trying again may help.
"""

from __future__ import annotations


class FacewardenError(Exception):
    """Base error: ``code`` is stable and machine-readable, ``message`` is for people."""

    code: str = "error"
    #: True when a later attempt may succeed (detector crash, store hiccup, timeout).
    retryable: bool = False

    def __init__(self, code: str | None = None, message: str = "", *, retryable: bool | None = None):
        self.code = code or self.code
        self.message = message or self.code
        if retryable is not None:
            self.retryable = retryable
        super().__init__(f"{self.code}: {self.message}")

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InputRejected(FacewardenError):
    """The input itself cannot be processed (corrupt, hostile, not a photo, no face...).

    Retrying never helps; the worker records the reason at once.
    """

    code = "input.rejected"
    retryable = False


class ProcessingFailed(FacewardenError):
    """Processing broke for a reason outside the input (model error, timeout, I/O)."""

    code = "processing.failed"
    retryable = True


class ConfigError(FacewardenError):
    """The configuration is invalid; raised at start-up, naming the key and the problem."""

    code = "config.invalid"


class ModelError(FacewardenError):
    """A model file is missing or corrupt; the message names the command that fixes it."""

    code = "model.unavailable"


class StoreError(FacewardenError):
    """A store could not read or write; usually transient."""

    code = "store.error"
    retryable = True


class UnsafeKey(InputRejected):
    """An object key that would escape its store (``..``, absolute paths, NUL bytes)."""

    code = "key.unsafe"


class UnknownBackend(FacewardenError):
    """A backend name (detector, segmenter, embedder, finder policy...) nobody registered;
    ``known`` lists the names that are."""

    code = "backend.unknown"
    retryable = False

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]):
        self.kind = kind
        self.name = name
        self.known = tuple(known)
        super().__init__(message=f"unknown {kind} {name!r}; known: {', '.join(self.known)}")
