"""Structured logs: JSON lines when not on a TTY (production), readable on a console.

Event names plus fields only; never image bytes, embeddings or anything that identifies a
face (the pipeline logs counts and reason codes).
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

from facewarden.config.redact import redact_log_fields
from facewarden.models.quiet import real_stderr_fd

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_log_fields,  # no password, token or HMAC secret ever reaches a log line
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )


class _Stderr:
    """sys.stderr, except while ``facewarden.models.quiet`` has fd 2 pointed at a capture
    file: our own lines then go to the real stderr, so no event is lost or demoted."""

    def write(self, text: str) -> int:
        fd = real_stderr_fd()
        if fd is None:
            return sys.stderr.write(text)
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(fd, data):]
        return len(text)

    def flush(self) -> None:
        if real_stderr_fd() is None:
            sys.stderr.flush()
