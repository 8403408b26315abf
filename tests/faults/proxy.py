"""A small TCP proxy that misbehaves on demand, between the daemon and RabbitMQ or S3.

Modes (switch at any time with ``proxy.mode = ...`` or the helpers):

- ``pass``: forwards bytes both ways.
- ``refuse``: stops listening (new connections get ECONNREFUSED) and resets every open
  connection, like a service that went away.
- ``reset``: accepts, then resets each connection at once (RST), open ones included.
- ``stall``: accepts, then forwards nothing either way, like a partition or a hung
  server; bytes held back flow again when the mode returns to ``pass``.
- ``slow``: forwards in small chunks with a delay (``slow_delay`` seconds per chunk).
- ``http503``: answers every HTTP request itself with ``503 SlowDown`` (S3's throttling
  reply), without contacting the upstream.

Only loopback addresses: the proxy listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

MODES = ("pass", "refuse", "reset", "stall", "slow", "http503")
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, slow_delay: float = 0.2):
        self.upstream = (upstream_host, upstream_port)
        self.slow_delay = slow_delay
        self._mode = "pass"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listen()

    # -- control ---------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        assert mode in MODES, mode
        with self._lock:
            self._mode = mode
        if mode in ("refuse", "reset"):
            self._reset_all()
        if mode == "refuse":
            self._unlisten()
        elif self._listener is None:
            self._listen()

    def close(self) -> None:
        self._closed = True
        self._unlisten()
        self._reset_all()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- internals -------------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # the port may linger for a moment after a refuse
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.1)
        sock.listen(128)
        self._listener = sock
        threading.Thread(target=self._accept_loop, args=(sock,), daemon=True).start()

    def _unlisten(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            _rst(c)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._mode in ("reset", "refuse"):
                _rst(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._mode == "http503":
            self._answer_503(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _rst(client)
            return
        with self._lock:
            self._conns.update((client, upstream))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self._mode == "stall" and not self._closed:
                    time.sleep(0.05)
                if self._mode == "slow":
                    for i in range(0, len(data), 1024):
                        time.sleep(self.slow_delay)
                        dst.sendall(data[i:i + 1024])
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._lock:
                self._conns.discard(src)

    def _answer_503(self, client: socket.socket) -> None:
        try:
            client.settimeout(5)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = client.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOWDOWN_BODY))
            client.sendall(head + SLOWDOWN_BODY)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
