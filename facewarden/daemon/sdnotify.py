"""systemd's notify protocol (sd_notify) without a dependency: one datagram per state.

``Type=notify`` units wait for ``READY=1``; ``WatchdogSec=`` units are restarted when
``WATCHDOG=1`` stops arriving. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op, so callers never need to know how they were started.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Sends ``state`` (e.g. "READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=...").
    Returns True when a notify socket was there and the datagram was sent; never raises,
    because a lost notification must not take the service down."""
    # NOTIFY_SOCKET is how systemd hands the socket to the service: the protocol itself.
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False
