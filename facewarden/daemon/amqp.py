"""The one way this project opens a RabbitMQ connection (job queue, result publisher,
S3 notification consumer, job-message source).

Every connection gets the same, safe defaults: one connection attempt per call (the
caller's loop retries with ``backoff.Backoff``, so a stop request is noticed between
tries), a socket timeout so a stalled broker cannot hang a thread, a heartbeat, a blocked
timeout (a broker in flow control does not hang a publisher forever) and a connection name
that says which process and role it belongs to (visible in the management UI).
"""

from __future__ import annotations

import os
from typing import Any

import pika
import pika.exceptions

SOCKET_TIMEOUT = 5.0


def connection_parameters(url: str, *, heartbeat: int | None = 30, role: str = "",
                          blocked_timeout: float | None = None) -> pika.URLParameters:
    params = pika.URLParameters(url)
    if heartbeat is not None:
        params.heartbeat = heartbeat
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = SOCKET_TIMEOUT
    params.blocked_connection_timeout = blocked_timeout or max(30.0, float(heartbeat or 30))
    name = f"facewarden pid {os.getpid()}" + (f" {role}" if role else "")
    params.client_properties = {"connection_name": name}
    return params


def open_connection(params: pika.connection.Parameters) -> Any:
    """``pika.BlockingConnection(params)``, with pika's one non-AMQP failure named as what
    it is: when the peer resets the socket between the TCP connect and pika's first look
    at it, pika raises a bare ValueError ("Expected connected socket, but getpeername()
    failed"). That is a connection lost, an outage to wait out like any other, not bad
    input (seen in CI: the reset-proxy fault test, once in ~10 runs)."""
    try:
        return pika.BlockingConnection(params)
    except ValueError as exc:
        raise pika.exceptions.AMQPConnectionError(f"connection lost while opening: {exc}") from exc


def connect(url: str, *, heartbeat: int | None = 30, role: str = "",
            blocked_timeout: float | None = None) -> Any:
    """One attempt; raises pika's AMQPError / OSError when the broker cannot be reached."""
    return open_connection(connection_parameters(
        url, heartbeat=heartbeat, role=role, blocked_timeout=blocked_timeout))


def redact_url(url: str) -> str:
    """The URL without its password (for logs and error messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
