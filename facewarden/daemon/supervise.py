"""One supervision loop for ``facewarden run`` (the daemon) and ``facewarden worker``.

The loop owns the process's lifecycle, so both commands behave the same way:

- **Start-up is all-or-nothing.** ``service.start()`` builds the cheap things that can fail
  first (routes, models, stores, sources, the HTTP port, the broker) and only then starts
  the heavy ones (worker processes). Any failure stops whatever was already started and
  the process exits with one line on stderr and a documented code
  (``facewarden.exitcodes``): 78 for configuration and missing models (systemd's
  ``RestartPreventExitStatus=78``), 69 when a service we need is unavailable, 70 for a bug.
- **Signals only set a flag.** SIGTERM/SIGINT handlers store the signal number in a plain
  attribute and write one byte to a non-blocking pipe: no lock, no logging, nothing that
  can deadlock when a second signal arrives inside the first handler (``Event.set()``
  from a handler can: it takes a lock the interrupted code may hold). Any number of
  signals, however fast, end in one orderly stop.
- **The stop is orderly.** The service learns it is stopping before anything stops, so
  workers that exit with the daemon are never mistaken for crashes and replaced; sources
  stop (no new jobs), workers finish or hand back the job in hand, then the HTTP server
  and the queue close.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import Any, Protocol

import structlog

from facewarden import exitcodes
from facewarden.daemon.sdnotify import notify
from facewarden.errors import ConfigError, FacewardenError, ModelError

log = structlog.get_logger("facewarden.supervise")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: How long a failed start-up may let workers finish a job before they are killed (the
#: job goes back to the queue): start-up failures exit within 10 s.
START_FAILURE_GRACE = 5.0


class StopRequest:
    """"Please stop", from a signal or from code (tests, a fatal condition), on any thread.

    ``requested`` is a plain attribute; ``wait()`` sleeps on a pipe that a signal or
    ``request()`` writes to, so the main loop wakes at once and never holds a lock that a
    signal handler could need.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._previous: dict[int, Any] = {}

    # -- signals ------------------------------------------------------------------------
    def install(self) -> bool:
        """Takes over SIGTERM/SIGINT (main thread only); returns False elsewhere."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Async-signal-safe by construction: attribute stores and one write(2).
        if self.signum is None:
            self.signum = signum
        self.requested = True
        self._wake()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous.clear()

    # -- from code ------------------------------------------------------------------------
    def request(self) -> None:
        self.requested = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # pipe full: a wake-up is already pending
            os.write(self._wfd, b"\0")

    def wait(self, timeout: float) -> bool:
        """Sleeps up to ``timeout`` s or until a stop is requested; returns ``requested``."""
        if not self.requested:
            with contextlib.suppress(InterruptedError, OSError, ValueError):
                select.select([self._rfd], [], [], max(0.0, timeout))
        with contextlib.suppress(OSError):
            while os.read(self._rfd, 512):
                pass
        return self.requested

    def close(self) -> None:
        self.restore()
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Supervised(Protocol):
    """What ``supervise`` runs: the daemon (app.Daemon) or a worker host (WorkerHost)."""

    #: Prefix of the lifecycle log events ("daemon", "worker_host").
    name: str

    def start(self, stop: StopRequest) -> None:
        """Starts everything, cheap and fallible parts first; raises on failure (the
        caller then calls ``stop``). Returns early when ``stop.requested`` turns true."""
        ...

    def tick(self) -> int | None:
        """Called about once a second; returns an exit code to stop with (fatal state)."""
        ...

    def status(self) -> str:
        """One line for systemd's STATUS=."""
        ...

    def stop(self, grace: float | None = None) -> None:
        """Stops whatever was started, in order; safe to call more than once and after a
        partial start. ``grace`` bounds how long a job in progress may take to finish."""
        ...


def exit_code_for(err: BaseException) -> int:
    """The documented exit code for a failure (see facewarden/exitcodes.py)."""
    from pydantic import ValidationError

    if isinstance(err, ConfigError | ModelError | ValidationError):
        return exitcodes.EX_CONFIG
    if isinstance(err, FacewardenError):
        return exitcodes.EX_UNAVAILABLE if err.retryable else exitcodes.EX_FAILED
    return exitcodes.EX_SOFTWARE


def error_line(err: BaseException) -> str:
    if isinstance(err, FacewardenError):
        return f"error [{err.code}]: {err.message}"
    return f"error [internal]: {type(err).__name__}: {err}"


def supervise(service: Supervised, stop: StopRequest | None = None, *, tick: float = 1.0,
              keep_handlers: bool = False) -> int:
    """Starts ``service``, keeps it running until a signal, ``stop.request()`` or a fatal
    state, then stops it in order. Returns the process exit code; never raises.

    ``keep_handlers``: leave the flag-only handlers installed after returning (commands
    that exit right after: a late signal must not kill the process mid-exit)."""
    own = stop is None and not keep_handlers
    stop = stop or StopRequest()
    stop.install()
    try:
        try:
            service.start(stop)
        except BaseException as err:  # noqa: BLE001 - every start failure ends the same way
            code = exit_code_for(err)
            if code == exitcodes.EX_SOFTWARE:
                log.exception(f"{service.name}.start_crashed")
            print(error_line(err), file=sys.stderr, flush=True)
            _stop_quietly(service, START_FAILURE_GRACE)
            return code
        code = exitcodes.EX_OK
        if not stop.requested:
            notify("READY=1")
            while not stop.wait(tick):
                notify("WATCHDOG=1")
                fatal = service.tick()
                if fatal is not None:
                    code = fatal
                    break
                notify(f"STATUS={service.status()}")
        if stop.signum is not None:
            log.info(f"{service.name}.signal", signal=signal.Signals(stop.signum).name)
        notify("STOPPING=1")
        _stop_quietly(service, None)
        return code
    finally:
        if not keep_handlers:
            stop.restore()
        if own:
            stop.close()


def _stop_quietly(service: Supervised, grace: float | None) -> None:
    try:
        service.stop(grace)
    except Exception as exc:  # noqa: BLE001 - stopping must finish; the error is logged
        log.exception(f"{service.name}.stop_failed", error=type(exc).__name__)
