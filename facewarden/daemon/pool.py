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
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from facewarden import exitcodes
from facewarden.config import dump_for_child
from facewarden.config.schema import Settings
from facewarden.daemon import metrics
from facewarden.daemon.health import Health
from facewarden.video.progress import making_progress

log = structlog.get_logger("facewarden.pool")
_CTX = mp.get_context("spawn")
EX_CONFIG = exitcodes.EX_CONFIG  # a worker that cannot start for a reason a restart cannot fix
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


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


class _StopFlag:
    """A worker process's "stop after this job": the supervisor's shared event, this
    process's own signal flag, or the supervisor gone (orphaned workers stop too).

    The signal handler only sets ``signalled`` (a plain attribute): setting a
    multiprocessing Event from a handler takes a lock, and a second signal arriving inside
    the first handler would wait on it forever."""

    def __init__(self, shared: Any):
        self.shared = shared
        self.signalled = False
        self.parent = os.getppid()

    def on_signal(self, _signum: int, _frame: Any) -> None:
        self.signalled = True

    def is_set(self) -> bool:
        return self.signalled or os.getppid() != self.parent or self.shared.is_set()


def _worker_main(settings_json: str, name: str, stop: Any, workers: int = 1,
                 ready: Any = None) -> None:
    # The supervisor spawned us with SIGTERM/SIGINT blocked, so a signal that arrived while
    # this interpreter was starting is pending, not fatal: it is delivered to the handler
    # when we unblock, and this worker stops cleanly (exit 0) instead of dying mid-import.
    flag = _StopFlag(stop)
    for sig in STOP_SIGNALS:
        signal.signal(sig, flag.on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    limit_native_threads(workers)
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.queues.factory import open_queue
    from facewarden.daemon.worker import run_worker
    from facewarden.errors import ConfigError, ModelError

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log.format, settings.log.level)
    if flag.is_set():
        return  # stopped while starting: do not load models only to exit
    queue = open_queue(settings)
    try:
        run_worker(settings, queue, flag, name=name, on_ready=ready.set if ready is not None else None)
    except (ModelError, ConfigError) as err:
        # Restarting cannot fix this; tell the supervisor to stop with the reason.
        structlog.get_logger("facewarden.worker").error("worker.fatal", code=err.code, reason=err.message)
        raise SystemExit(EX_CONFIG) from err
    finally:
        queue.close()


class WorkerPool:
    """Starts, watches and stops the worker processes.

    ``stopping`` is the supervisor's "a stop was requested" (read without a lock), so a
    worker that exits because the whole process group got SIGTERM is never taken for a
    crash and replaced. ``health`` gets the ``workers`` component: ready only when every
    worker process has loaded its models.
    """

    #: A worker that exits cleanly (0) was asked to stop; wait this long for the stop
    #: request to reach the supervisor before treating it as lost and replacing it.
    CLEAN_EXIT_GRACE = 2.0

    def __init__(self, settings: Settings, queue: Any, count: int, *, health: Health | None = None,
                 stopping: Callable[[], bool] | None = None):
        self.settings = settings
        self.queue = queue  # the supervisor's own handle, for giving back leases
        self.count = count
        self.health = health
        self._stopping_hint = stopping or (lambda: False)
        self.stop_event = _CTX.Event()
        self.procs: dict[str, BaseProcess] = {}
        self._ready: dict[str, Any] = {}
        self._clean_exit_at: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._serial = 0
        self.restarts = 0
        self.fatal: str | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping or self._stopping_hint()

    def _spawn(self) -> None:
        self._serial += 1
        name = f"{socket.gethostname()}:{os.getpid()}:w{self._serial}"
        ready = _CTX.Event()
        proc = _CTX.Process(target=_worker_main, name=name, daemon=False,
                            args=(dump_for_child(self.settings), name, self.stop_event, self.count, ready))
        # The child inherits this thread's signal mask: it starts with SIGTERM/SIGINT
        # blocked and unblocks them once its handlers are in place (see _worker_main).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.procs[name] = proc
        self._ready[name] = ready
        log.info("worker.started", worker=name, pid=proc.pid)

    def start(self) -> None:
        self._report()
        for _ in range(self.count):
            if self.stopping:
                break
            self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()

    def _give_back(self, name: str, code: str, message: str) -> None:
        # Brokers redeliver on their own when the connection drops (their release_owner is 0).
        n = self.queue.release_owner(name, reason={"code": code, "message": message},
                                     delay=self.settings.workers.backoff_base)
        if n:
            log.warning("job.given_back", worker=name, code=code, jobs=n)

    def ready_count(self) -> int:
        return sum(1 for name, p in list(self.procs.items())
                   if p.is_alive() and self._ready.get(name) is not None and self._ready[name].is_set())

    def _report(self) -> None:
        if self.health is None:
            return
        if self.stopping:
            self.health.set("workers", False, "stopping")
            return
        ready = self.ready_count()
        ok = ready >= self.count
        self.health.set("workers", ok, None if ok else
                        f"{ready}/{self.count} worker processes have loaded their models")

    def _reap(self, name: str, proc: BaseProcess) -> None:
        if proc.pid is not None:
            metrics.process_exited(proc.pid)  # its live-only gauges go with it
        del self.procs[name]
        self._ready.pop(name, None)
        self._clean_exit_at.pop(name, None)

    def _supervise(self) -> None:
        timeout = self.settings.workers.job_timeout
        while not self.stopping:
            for name, proc in list(self.procs.items()):
                if proc.is_alive() or self.stopping:
                    continue
                if proc.exitcode == EX_CONFIG:
                    self._reap(name, proc)
                    self.fatal = "a worker could not start (missing model or bad configuration; see log)"
                    self._report()
                    return
                if proc.exitcode == 0:
                    # It stopped because it was asked to (SIGTERM to the group): the stop
                    # request is on its way to us. Replace it only if none comes.
                    first = self._clean_exit_at.setdefault(name, time.monotonic())
                    if time.monotonic() - first < self.CLEAN_EXIT_GRACE:
                        continue
                self._reap(name, proc)
                log.error("worker.died", worker=name, exitcode=proc.exitcode)
                self._give_back(name, "worker.died",
                                f"the worker process exited unexpectedly (exit code {proc.exitcode})")
                self.restarts += 1
                self._spawn()
            if not self.stopping:
                for owner, job_id in self.queue.leases_older_than(timeout):
                    if making_progress(self.settings.state_dir, job_id, timeout):
                        continue  # a long video that keeps moving (facewarden/video/progress.py)
                    proc = self.procs.get(owner)
                    if proc is not None and proc.is_alive():
                        log.error("job.timeout", worker=owner, job_id=job_id, timeout_s=timeout)
                        proc.kill()
                        proc.join(5)
                        self._reap(owner, proc)
                        self._give_back(owner, "processing.timeout", f"the job ran longer than {timeout:.0f} s")
                        self.restarts += 1
                        self._spawn()
            self._report()
            time.sleep(0.2)
        self._report()

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.procs.values())

    def begin_stop(self) -> None:
        """From now on no worker is replaced and none takes a new job (call it before
        stopping anything else, so exits caused by the stop are not taken for crashes)."""
        self._stopping = True
        self.stop_event.set()
        self._report()

    def stop(self, grace: float | None = None) -> None:
        """Drain: no new job starts; jobs in progress finish (up to ``grace``, default the
        job timeout), then stragglers are killed and their job is handed back."""
        self.begin_stop()
        if self._thread is not None:
            self._thread.join(2)
        deadline = time.monotonic() + (grace if grace is not None else self.settings.workers.job_timeout)
        for name, proc in list(self.procs.items()):
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker.kill_after_grace", worker=name)
                proc.kill()
                proc.join(5)
                self._give_back(name, "worker.stopped", "the daemon stopped before the job finished")
        for proc in self.procs.values():
            if proc.pid is not None:
                metrics.process_exited(proc.pid)
        self.procs.clear()
        self._ready.clear()
