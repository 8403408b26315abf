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


class UsageError(FacewardenError):
    """The command line itself is wrong (unknown handler, invalid params, an output that
    would replace an input)."""

    code = "usage.invalid"


class UnknownBackend(ConfigError):
    """A handler, store, queue, source, detector... name that no backend registered.

    One error type for every registry, listing the names that do exist."""

    code = "backend.unknown"

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...] | set[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        # The code names the kind (handler.unknown, store.unknown...), so callers that
        # report reason codes keep a precise one.
        super().__init__(f"{kind.replace(' ', '_')}.unknown",
                         f"no {kind} named {name!r}; known: {', '.join(self.known) or '(none)'}")
