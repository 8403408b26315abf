"""Worker processes under a supervisor.

Each worker is its own process (models load once per process; a segfault or OOM kill in a
native model library takes down one worker, not the daemon). The supervisor replaces dead
workers, gives their leased job back with a reason, kills workers whose job hangs past the
timeout, and on stop lets every worker finish its current job (drain).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from facewarden.config.schema import Settings
from facewarden.video.progress import making_progress

log = structlog.get_logger("facewarden.pool")
_CTX = mp.get_context("spawn")
EX_CONFIG = 78  # sysexits: a worker that cannot start for a reason a restart cannot fix


def limit_native_threads(workers: int) -> int:
    """Gives this worker process its share of the cores.

    OpenCV, OpenMP and BLAS each start a thread per core in every process; N workers on N
    cores then fight over them and every image costs more CPU. Called first thing in a
    worker process, before numpy or OpenCV are imported (the env vars are read at import).
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    import cv2

    cv2.setNumThreads(threads)
    return threads


def _worker_main(settings_json: str, name: str, stop: Any, workers: int = 1) -> None:
    # SIGINT goes to the whole process group on Ctrl-C; the supervisor coordinates.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    limit_native_threads(workers)
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.queues.factory import open_queue
    from facewarden.daemon.worker import run_worker
    from facewarden.errors import ConfigError, ModelError

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log.format, settings.log.level)
    queue = open_queue(settings)
    try:
        run_worker(settings, queue, stop, name=name)
    except (ModelError, ConfigError) as err:
        # Restarting cannot fix this; tell the supervisor to stop with the reason.
        structlog.get_logger("facewarden.worker").error("worker.fatal", code=err.code, reason=err.message)
        raise SystemExit(EX_CONFIG) from err
    finally:
        queue.close()


class WorkerPool:
    def __init__(self, settings: Settings, queue: Any, count: int):
        self.settings = settings
        self.queue = queue  # the supervisor's own handle, for giving back leases
        self.count = count
        self.stop_event = _CTX.Event()
        self.procs: dict[str, BaseProcess] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._serial = 0
        self.restarts = 0
        self.fatal: str | None = None

    def _spawn(self) -> None:
        self._serial += 1
        name = f"{socket.gethostname()}:{os.getpid()}:w{self._serial}"
        proc = _CTX.Process(target=_worker_main, name=name, daemon=False,
                            args=(self.settings.model_dump_json(), name, self.stop_event, self.count))
        proc.start()
        self.procs[name] = proc
        log.info("worker.started", worker=name, pid=proc.pid)

    def start(self) -> None:
        for _ in range(self.count):
            self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()

    def _give_back(self, name: str, code: str, message: str) -> None:
        release = getattr(self.queue, "release_owner", None)
        if release is not None:  # brokers redeliver on their own when the connection drops
            n = release(name, reason={"code": code, "message": message},
                        delay=self.settings.workers.backoff_base)
            if n:
                log.warning("job.given_back", worker=name, code=code, jobs=n)

    def _supervise(self) -> None:
        timeout = self.settings.workers.job_timeout
        while not self._stopping:
            for name, proc in list(self.procs.items()):
                if proc.is_alive() or self._stopping:
                    continue
                del self.procs[name]
                if proc.exitcode == EX_CONFIG:
                    self.fatal = "a worker could not start (missing model or bad configuration; see log)"
                    return
                log.error("worker.died", worker=name, exitcode=proc.exitcode)
                self._give_back(name, "worker.died",
                                f"the worker process exited unexpectedly (exit code {proc.exitcode})")
                self.restarts += 1
                self._spawn()
            stale = getattr(self.queue, "leases_older_than", None)
            if stale is not None:
                for owner, job_id in stale(timeout):
                    if making_progress(self.settings.state_dir, job_id, timeout):
                        continue  # a long video that keeps moving (facewarden/video/progress.py)
                    proc = self.procs.get(owner)
                    if proc is not None and proc.is_alive():
                        log.error("job.timeout", worker=owner, job_id=job_id, timeout_s=timeout)
                        proc.kill()
                        proc.join(5)
                        del self.procs[owner]
                        self._give_back(owner, "processing.timeout", f"the job ran longer than {timeout:.0f} s")
                        self.restarts += 1
                        self._spawn()
            time.sleep(0.2)

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.procs.values())

    def stop(self, grace: float | None = None) -> None:
        """Drain: no new job starts; jobs in progress finish (up to the job timeout)."""
        self._stopping = True
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(2)
        deadline = time.monotonic() + (grace if grace is not None else self.settings.workers.job_timeout)
        for name, proc in self.procs.items():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker.kill_after_grace", worker=name)
                proc.kill()
                proc.join(5)
                self._give_back(name, "worker.stopped", "the daemon stopped before the job finished")
        self.procs.clear()
