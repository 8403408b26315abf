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
    #: True when the cause is a service or disk outside the input (store, broker, network):
    #: such failures wait for the service (time budget, circuit breaker) instead of using
    #: up the job's attempts, and are never a reason to quarantine an input on their own.
    infrastructure: bool = False
    #: The store (by configured name) that failed, when a store failed.
    store: str | None = None

    def __init__(self, code: str | None = None, message: str = "", *, retryable: bool | None = None,
                 infrastructure: bool | None = None, store: str | None = None):
        self.code = code or self.code
        self.message = message or self.code
        if retryable is not None:
            self.retryable = retryable
        if infrastructure is not None:
            self.infrastructure = infrastructure
        if store is not None:
            self.store = store
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


class QueueUnavailable(ProcessingFailed):
    """The queue (broker, or the embedded queue's disk) could not take or give a job in
    time; the caller may try again later."""

    code = "queue.unavailable"
    retryable = True
    infrastructure = True


class ConfigError(FacewardenError):
    """The configuration is invalid; raised at start-up, naming the key and the problem."""

    code = "config.invalid"


class ModelError(FacewardenError):
    """A model file is missing or corrupt; the message names the command that fixes it."""

    code = "model.unavailable"


class StoreError(FacewardenError):
    """A store could not read or write. Whether it is transient is decided where the cause
    is known (errno, S3 error code): see ``StoreUnavailable`` and ``StoreRefused``."""

    code = "store.error"
    retryable = True
    infrastructure = True


class StoreUnavailable(StoreError):
    """The store is unreachable, full, slow or failing (ECONNREFUSED, timeouts, 5xx,
    throttling, ENOSPC, EIO): it will very likely work again later."""

    code = "store.unavailable"
    retryable = True
    infrastructure = True


class StoreRefused(StoreError):
    """The store answered and said no for a reason a retry cannot change (access denied,
    no such bucket, a name it cannot hold)."""

    code = "store.refused"
    retryable = False
    infrastructure = False


#: Reason codes that mean "an outage, not the input". Quarantine records carrying one of
#: these (written by this version after the retry budget ran out, or by earlier versions
#: after three quick attempts) are re-driven when their store is back.
INFRASTRUCTURE_CODES = frozenset({
    "store.error", "store.unavailable", "store.full", "store.read_failed", "store.write_failed",
    "queue.unavailable", "retry.budget_exhausted",
})


def is_infrastructure(err: BaseException) -> bool:
    return isinstance(err, FacewardenError) and err.retryable and err.infrastructure


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
