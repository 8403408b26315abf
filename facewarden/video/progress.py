"""A running video job's progress, as a small JSON file per job in the state directory.

Worker processes write it (at most every couple of seconds); the supervisor and status
readers read it. Kept free of heavy imports so that the supervisor can ask cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any


def progress_path(state_dir: Path | str, job_id: str) -> Path:
    return Path(state_dir) / "progress" / f"{job_id}.json"


def write_progress(state_dir: Path | str, status: dict[str, Any]) -> None:
    path = progress_path(state_dir, status["job_id"])
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)


def read_progress(state_dir: Path | str, job_id: str) -> dict[str, Any] | None:
    """The job's last reported progress, or None when it is not running (or never was)."""
    try:
        return json.loads(progress_path(state_dir, job_id).read_text())
    except (OSError, ValueError):
        return None


def clear_progress(state_dir: Path | str, job_id: str) -> None:
    with contextlib.suppress(OSError):
        progress_path(state_dir, job_id).unlink(missing_ok=True)


def making_progress(state_dir: Path | str, job_id: str, within_s: float) -> bool:
    """True when the job reported progress in the last ``within_s`` seconds: a long video
    that keeps moving is not a hung job."""
    status = read_progress(state_dir, job_id)
    return bool(status) and time.time() - float(status.get("updated_at", 0)) <= within_s
