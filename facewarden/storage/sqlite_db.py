"""Opening the SQLite files several processes share (queue, audit index, gallery)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
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


class SharedDatabase:
    """One SQLite file used by several threads and processes (queue, audit index, gallery).

    sqlite3 connections must not cross threads or forks, so each thread of each process
    gets its own. ``write()`` takes the write lock up front (BEGIN IMMEDIATE): a
    read-then-write inside it cannot interleave with another writer's.
    """

    def __init__(self, path: Path, schema: str, *, pragmas: tuple[str, ...] = ()):
        self.path = Path(path)
        self.schema = schema
        self.pragmas = pragmas
        self._local = threading.local()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", 0) != os.getpid():
            conn = connect_shared(self.path, self.schema)
            for pragma in self.pragmas:
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Closes this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
