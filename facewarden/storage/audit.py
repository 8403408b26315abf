"""The audit log: one JSON record per processed input, hash-chained, indexed in SQLite.

Each record carries ``prev``, the hash of the record before it, and ``hash``, the sha256 of
its own canonical JSON (sorted keys, no whitespace, without the ``hash`` field). A copy is
written beside the result in the target store. ``verify`` proves that no record was
altered (hash), removed or reordered (seq and prev links, plus the HEAD file that pins the
newest record), and that the copies beside the results still match the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facewarden import __version__
from facewarden.storage.sqlite_db import SharedDatabase

GENESIS = "0" * 64
FINAL_OUTCOMES = ("ok", "rejected")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    job_id TEXT,
    idem_key TEXT,
    outcome TEXT,
    input_store TEXT,
    input_key TEXT,
    input_version TEXT,
    location TEXT,
    record TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_idem ON records(idem_key);
CREATE INDEX IF NOT EXISTS records_job ON records(job_id);
CREATE INDEX IF NOT EXISTS records_input ON records(input_store, input_key);
CREATE TABLE IF NOT EXISTS digests (
    sha256 TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS digests_sha ON digests(sha256);
"""


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def render(record: dict[str, Any]) -> bytes:
    """The bytes of a record as written beside a result: readable, and hashable again."""
    return (json.dumps(record, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    copies_checked: int = 0
    #: Copies replaced, intact, by the copy of a later record at the same place.
    superseded: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """Safe to use from several processes at once: appends are serialised by SQLite."""

    def __init__(self, state_dir: Path | str, *, create: bool = True):
        self.dir = Path(state_dir) / "audit"
        if not create and not self.dir.is_dir():
            raise FileNotFoundError(f"no audit log at {self.dir}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "audit.db"
        self.head_path = self.dir / "HEAD"
        # Sources, HTTP handlers and worker threads share this object.
        self._db = SharedDatabase(self.db_path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------------
    def append(self, record: dict[str, Any], *, place: Callable[[dict[str, Any], bytes], str | None] | None = None
               ) -> dict[str, Any]:
        """Chains and stores one record. ``place`` writes the copy beside the result and
        returns its location ("store:key"); it runs inside the write lock so the chain order
        equals the order of copies. Returns the complete record (with seq, prev, hash)."""
        with self._db.write() as conn:
            row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            full = {
                "kind": "job",
                **record,
                "seq": seq,
                "prev": prev,
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname(),
                "facewarden_version": __version__,
            }
            full["hash"] = record_hash(full)
            location = place(full, render(full)) if place else None
            inp = full.get("input") or {}
            conn.execute(
                "INSERT INTO records(seq, kind, job_id, idem_key, outcome, input_store, input_key,"
                " input_version, location, record, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (seq, full["kind"], full.get("job_id"), full.get("idempotency_key"), full.get("outcome"),
                 inp.get("store"), inp.get("key"), inp.get("version"), location,
                 canonical(full).decode("utf-8"), full["hash"]),
            )
            digests = [(inp["sha256"], seq, "input")] if inp.get("sha256") else []
            digests += [(o["sha256"], seq, "output") for o in full.get("outputs") or [] if o.get("sha256")]
            conn.executemany("INSERT INTO digests(sha256, seq, role) VALUES (?,?,?)", digests)
            self._write_head(seq, full["hash"])
        return full

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(f"{seq} {digest}\n")
        os.replace(tmp, self.head_path)

    # -- reading ---------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        return [{**json.loads(r[0]), "hash": r[1]} for r in self._db.conn().execute(sql, args).fetchall()]

    def latest(self, kind: str = "job", limit: int = 50) -> list[dict[str, Any]]:
        """The newest records of one kind, newest first (the console's dashboard)."""
        return self._rows("SELECT record, hash FROM records WHERE kind=? ORDER BY seq DESC LIMIT ?", (kind, limit))

    def find_results(self, idem_key: str) -> list[dict[str, Any]]:
        """Every ok record (first results and their copies) for this idempotency key,
        oldest first. Failures are never results: a rejected input is tried again."""
        return self._rows("SELECT record, hash FROM records WHERE idem_key=? AND outcome='ok' ORDER BY seq",
                          (idem_key,))

    def find_job(self, job_id: str) -> dict[str, Any] | None:
        """The record that finished this job, if it was finished (a redelivered job)."""
        rows = self._rows("SELECT record, hash FROM records WHERE job_id=? ORDER BY seq DESC LIMIT 1", (job_id,))
        return rows[0] if rows else None

    def has_input(self, store: str, key: str, version: str | None = None) -> bool:
        sql = "SELECT 1 FROM records WHERE input_store=? AND input_key=?"
        args: tuple = (store, key)
        if version:
            sql += " AND (input_version=? OR input_version IS NULL)"
            args += (version,)
        return self._db.conn().execute(sql + " LIMIT 1", args).fetchone() is not None

    def by_sha256(self, digest: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT r.record, r.hash FROM records r JOIN digests d ON d.seq = r.seq WHERE d.sha256=? "
            "ORDER BY r.seq", (digest,))

    def by_key(self, key: str) -> list[dict[str, Any]]:
        return self._rows("SELECT record, hash FROM records WHERE input_key=? ORDER BY seq", (key,))

    def count(self) -> int:
        return self._db.conn().execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def iter_records(self) -> Iterator[tuple[int, str | None, str, str]]:
        yield from self._db.conn().execute("SELECT seq, location, record, hash FROM records ORDER BY seq")

    # -- verifying -------------------------------------------------------------------
    def _superseded(self, seq: int, location: str, copy: dict[str, Any]) -> bool:
        """True when the copy at ``location`` is, intact, the copy of a later record placed
        at the same location (a newer version of the input, --force, --overwrite)."""
        later = copy.get("seq")
        if not isinstance(later, int) or later <= seq or record_hash(copy) != copy.get("hash"):
            return False
        row = self._db.conn().execute("SELECT hash, location FROM records WHERE seq=?", (later,)).fetchone()
        return row is not None and row[0] == copy["hash"] and row[1] == location

    def verify(self, read_copy: Callable[[str, dict[str, Any]], bytes | None] | None = None) -> VerifyReport:
        """Walks the whole chain. ``read_copy(location, record)`` returns the bytes of a copy
        beside a result (None when its store is not reachable from here)."""
        report = VerifyReport()
        prev, expected_seq = GENESIS, 1
        for seq, location, text, stored_hash in self.iter_records():
            report.records += 1
            record = json.loads(text)
            if seq != expected_seq:
                report.problems.append(f"record {expected_seq}..{seq - 1} missing (removed from the log)")
            expected_seq = seq + 1
            if record.get("seq") != seq:
                report.problems.append(f"record {seq}: its seq field says {record.get('seq')} (reordered)")
            if record_hash(record) != stored_hash:
                report.problems.append(f"record {seq}: content does not match its hash (altered)")
            if record.get("prev") != prev:
                report.problems.append(f"record {seq}: prev does not match record {seq - 1}'s hash "
                                       "(altered, removed or reordered)")
            prev = stored_hash
            if location and read_copy is not None:
                data = read_copy(location, record)
                if data is None:
                    continue
                report.copies_checked += 1
                try:
                    copy = json.loads(data)
                except ValueError:
                    report.problems.append(f"record {seq}: the copy at {location} is not JSON (altered)")
                    continue
                if copy.get("hash") == stored_hash and record_hash(copy) == stored_hash:
                    continue
                if self._superseded(seq, location, copy):
                    report.superseded += 1
                    continue
                report.problems.append(f"record {seq}: the copy at {location} differs from the log (altered)")
        head = self.head_path.read_text().split() if self.head_path.exists() else []
        if head and (int(head[0]) != expected_seq - 1 or head[1] != prev):
            report.problems.append(f"HEAD names record {head[0]} but the log ends at record {expected_seq - 1} "
                                   "(records at the end were removed, or the log was replaced)")
        if not head and report.records:
            report.problems.append("the HEAD file is missing")
        return report
