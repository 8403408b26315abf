"""Opening the SQLite files several processes share (queue, audit index, gallery)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def connect_shared(path: Path, schema: str, *, timeout: float = 60.0) -> sqlite3.Connection:
    """A connection in WAL mode with full fsync, schema created.

    Switching a brand-new database to WAL takes a lock that a busy timeout does not cover,
    so processes starting together on a fresh state dir retry that step instead of failing.
    """
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(schema)
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.05)
