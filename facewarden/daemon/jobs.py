"""Events (something arrived) and Jobs (what to do with it). Both are plain data so that
they cross process and broker boundaries as JSON."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """A source noticed an object. Sources never read pixels nor decide what to do."""

    store: str
    key: str
    source: str  # name of the source that saw it, e.g. "incoming" or "s3-sqs"
    #: Content version (size+mtime, ETag) so the same object seen twice is one event.
    version: str = ""
    hints: dict[str, Any] = field(default_factory=dict)
    seen_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Job:
    handler: str
    params: dict[str, Any]
    store: str  # input store name
    key: str  # input key
    target: str  # output store name
    target_prefix: str = ""
    #: What to do with the input after success: keep | move | delete.
    originals: str = "keep"
    processed_store: str = "processed"
    processed_prefix: str = ""
    #: Where the input goes, with its audit record, when it produces no result.
    quarantine_store: str = "quarantine"
    #: Key prefix stripped from the input key before it is placed under target_prefix.
    strip_prefix: str = ""
    #: Added to the input's stem in output keys (``_anonymized`` when results go beside inputs).
    output_suffix: str = ""
    #: An existing object with other content at an output key: never | own | always.
    #: ``own``: only facewarden's earlier result for this same input key is replaced.
    replace: str = "own"
    #: Process even when the target already has this result.
    force: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0
    created_at: float = field(default_factory=time.time)
    #: Event time (epoch seconds) for drop-to-result latency, correlation ids, reply-to...
    hints: dict[str, Any] = field(default_factory=dict)
    last_error: dict[str, str] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls(**json.loads(text))
