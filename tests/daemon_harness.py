"""Runs the real daemon as a subprocess for end-to-end tests, and reads what it wrote."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from facewarden.config import default_models_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MODELS = default_models_dir()


def write_config(path: Path, incoming: Path, outgoing: Path, state: Path, *, workers: int = 1,
                 extra: str = "", route_extra: str = "", stability: float = 0.5) -> Path:
    path.write_text(f"""
state_dir = "{state}"
models_dir = "{MODELS}"

[workers]
count = {workers}
backoff_base = 0.2
{extra}

[stores.incoming]
type = "local"
root = "{incoming}"

[stores.outgoing]
type = "local"
root = "{outgoing}"

[[sources]]
name = "incoming"
store = "incoming"
stability_delay = {stability}
rescan_interval = 5

[[routes]]
source = "incoming"
handler = "anonymize"
target = "outgoing"
{route_extra}

[log]
format = "json"
""")
    return path


class DaemonProcess:
    def __init__(self, config: Path, log: Path, *args: str):
        self.log = log
        self._log_fh = open(log, "ab")  # noqa: SIM115 - held for the child's lifetime
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "facewarden", "run", "--config", str(config), *args],
                                     stdout=subprocess.DEVNULL, stderr=self._log_fh, env=env,
                                     start_new_session=True)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_event(self, name: str, count: int = 1, timeout: float = 90) -> None:
        wait_for(lambda: sum(e.get("event") == name for e in self.events()) >= count, timeout,
                 f"{count}× {name} in {self.log}")

    def kill9(self) -> None:
        """kill -9 the whole process group: daemon and every worker, like a power cut."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log_fh.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def audit_rows(state: Path) -> list[dict]:
    db = state / "audit" / "audit.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [{**json.loads(r[0]), "hash": r[1]}
                for r in conn.execute("SELECT record, hash FROM records ORDER BY seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
