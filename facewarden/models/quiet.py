"""Keeps native libraries' console output out of our logs.

LiteRT/MediaPipe, glog and onnxruntime write straight to file descriptors 1 and 2 from C++
("Sparsity tensors may not yet be fully supported" 46 times per start, XNNPACK banners...);
``GLOG_minloglevel`` and ``TF_CPP_MIN_LOG_LEVEL`` do not reach them. Off a TTY those lines
land between our JSON log lines and break log ingestion. So every model wrapper creates its
model inside :func:`native_output`, and a LiteRT model runs every inference in it too (glog
prints at any call, e.g. a misaligned input tensor): fds 1
and 2 point at a temporary file meanwhile, and what was written comes back as one
``native.output`` debug event per distinct line.

While fds are redirected, our own log lines must still reach the real stderr:
:func:`real_stderr_fd` names it and ``facewarden.daemon.logs`` writes there. Captures are
serialised by one process-wide lock (model loads are one-off and a MediaPipe call takes
~5-10 ms, so waiting is cheap); a nested capture in the same thread is a no-op inside the outer one.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import structlog

_lock = threading.RLock()
_depth = 0
_saved_stderr: int | None = None

#: Longest line kept in a ``native.output`` event; the rest is cut (it is noise anyway).
MAX_LINE = 300


def real_stderr_fd() -> int | None:
    """The process's real stderr while a capture is active, else None (use sys.stderr)."""
    return _saved_stderr


@contextmanager
def native_output(source: str) -> Iterator[None]:
    """Captures what native code prints on fds 1 and 2 inside the block.

    ``source`` names the model or library in the debug event. Use it around model
    creation and the first inference::

        with native_output("mediapipe-face"):
            self._detector = vision.FaceDetector.create_from_options(options)
    """
    global _depth, _saved_stderr
    with _lock:
        if _depth:
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        with tempfile.TemporaryFile() as sink:
            _flush_python_streams()
            saved_out, saved_err = os.dup(1), os.dup(2)
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            _saved_stderr, _depth = saved_err, 1
            try:
                yield
            finally:
                _flush_python_streams()
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
                _saved_stderr, _depth = None, 0
                os.close(saved_out)
                os.close(saved_err)
                sink.seek(0)
                _report(source, sink.read())


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, ValueError, OSError):
            stream.flush()


def _report(source: str, captured: bytes) -> None:
    if not captured:
        return
    lines = Counter(
        line.strip()[:MAX_LINE] for line in captured.decode("utf-8", "replace").splitlines() if line.strip()
    )
    log = structlog.get_logger()
    for line, count in lines.items():
        log.debug("native.output", source=source, line=line, repeat=count)
