"""The quarantine as a ledger: what is in it, and what was done with each entry.

Quarantine entries are the audit records of rejected or quarantined jobs whose input bytes
were kept in a quarantine store. Every action on an entry (retry, release, purge) is itself
an audit record (``kind = "quarantine"``) naming the entry's record by seq and hash, so the
chain proves who let which unprocessed image out, and an entry with an action is closed.
The records never carry image bytes; the bytes live only in the quarantine store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from facewarden.storage.audit import AuditLog
from facewarden.storage.base import Store


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    hash: str
    recorded_at: str
    outcome: str
    code: str
    message: str
    handler: str | None
    input: dict[str, Any]
    quarantine: dict[str, Any]
    record: dict[str, Any]

    @property
    def age_days(self) -> float:
        try:
            t = time.mktime(time.strptime(self.recorded_at, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        except (TypeError, ValueError):
            return 0.0
        return max(0.0, (time.time() - t) / 86400.0)

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "recorded_at": self.recorded_at, "outcome": self.outcome, "code": self.code,
                "message": self.message, "handler": self.handler, "input": self.input.get("key"),
                "input_store": self.input.get("store"), "sha256": self.input.get("sha256"),
                "size": self.input.get("size"), "quarantine": self.quarantine,
                "age_days": round(self.age_days, 2)}


def _closed(audit: AuditLog) -> set[int]:
    """Seqs of entries an action (or the outage re-drive) already dealt with."""
    closed: set[int] = set()
    for _seq, _location, text, _digest in audit.iter_records():
        record = json.loads(text)
        if record.get("kind") == "quarantine":
            closed.add(int(record["of"]["seq"]))
        elif record.get("kind") == "redrive" and record.get("redrive_of"):
            closed.add(int(record["redrive_of"]["seq"]))
    return closed


def entries(audit: AuditLog, *, include_closed: bool = False) -> Iterator[Entry]:
    closed = set() if include_closed else _closed(audit)
    for seq, _location, text, digest in audit.iter_records():
        record = json.loads(text)
        if record.get("kind", "job") != "job" or record.get("outcome") not in ("rejected", "quarantined"):
            continue
        if not record.get("quarantine") or seq in closed:
            continue
        reason = record.get("reason") or {}
        yield Entry(seq, digest, record.get("recorded_at", ""), record["outcome"], reason.get("code", ""),
                    reason.get("message", ""), record.get("handler"), record.get("input") or {},
                    record["quarantine"], {**record, "hash": digest})


def find(audit: AuditLog, seq: int) -> Entry | None:
    return next((e for e in entries(audit, include_closed=True) if e.seq == seq), None)


def is_open(audit: AuditLog, seq: int) -> bool:
    return seq not in _closed(audit)


def has_bytes(entry: Entry, stores: dict[str, Store]) -> bool:
    store = stores.get(entry.quarantine.get("store", ""))
    return store is not None and store.stat(entry.quarantine["key"]) is not None


def record_action(audit: AuditLog, entry: Entry, action: str, **details: Any) -> dict[str, Any]:
    """Called after the bytes moved, so that a record never claims an action that did not
    happen; a crash in between leaves an open entry whose bytes are gone, which
    `quarantine list` shows as missing and `purge` closes."""
    return audit.append({
        "kind": "quarantine", "action": action, "of": {"seq": entry.seq, "hash": entry.hash},
        "quarantined": {"store": entry.quarantine.get("store"), "key": entry.quarantine.get("key"),
                        "sha256": entry.input.get("sha256")},
        "code": entry.code, **details,
    })
