"""The one backoff policy: exponential delays with jitter, capped.

Every loop that waits before trying again (job retries, broker and S3 reconnects, result
publishing, start-up checks) uses it, so a burst of failures never retries in lockstep and
every cap is honoured the same way.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, *, jitter: bool = True) -> float:
    """Delay before try ``attempt + 1`` (``attempt`` >= 1 failures so far).

    ``base * 2**(attempt-1)`` capped at ``cap``; with jitter a random 50–100 % of that
    ("equal jitter"), so retries of a burst spread out but never wait less than half.
    """
    delay = min(cap, base * (2 ** min(max(0, attempt - 1), 62)))
    return delay * (0.5 + random.random() / 2) if jitter else delay


class Backoff:
    """Delays for one retry loop: ``next()`` after each failure, ``reset()`` after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, *, jitter: bool = True):
        self.base, self.cap, self.jitter = base, cap, jitter
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return backoff_delay(self.failures, self.base, self.cap, jitter=self.jitter)

    def reset(self) -> None:
        self.failures = 0
