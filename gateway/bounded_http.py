"""A threaded HTTP server that takes at most a fixed number of connections at once and refuses the
rest (logged), and cuts a connection whose request has not fully arrived in time, for the gateway's
loopback and plant-facing HTTP endpoints. It serves; routing is the handler's job.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

DEADLINE_CHECK_S = 0.5


class ConnectionDeadlines:
    """Cuts a connection still armed `limit_s` after it was armed. A timeout per read alone lets a
    client that sends a byte every few seconds hold a connection slot for ever; with enough of them,
    every slot."""

    def __init__(self, name: str, limit_s: float):
        self.name = name
        self.limit_s = limit_s
        self._due: dict[socket.socket, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{name}-deadlines", daemon=True)
        self._thread.start()

    def arm(self, connection: socket.socket, peer: str) -> None:
        with self._lock:
            self._due[connection] = (time.monotonic() + self.limit_s, peer)

    def disarm(self, connection: socket.socket) -> None:
        with self._lock:
            self._due.pop(connection, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        while not self._stop.wait(DEADLINE_CHECK_S):
            now = time.monotonic()
            with self._lock:
                late = [(c, peer) for c, (due, peer) in self._due.items() if due <= now]
                for connection, _ in late:
                    del self._due[connection]
            for connection, peer in late:
                log.warning(
                    "event=%s-request-too-slow peer=%s limit_s=%g action=connection closed",
                    self.name,
                    peer,
                    self.limit_s,
                )
                # the plain socket's shutdown, also under TLS: the reading thread sees end of file (an
                # SSLSocket's own shutdown would drop its TLS state under that thread's feet)
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(connection, socket.SHUT_RDWR)


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    name = "http"  # in log events: event=<name>-busy, event=<name>-request-failed
    # from a connection's start until its handler disarms it (once its request is read): the whole
    # connection unless the handler says otherwise
    request_deadline_s = 30.0

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int):
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)
        self.deadlines = ConnectionDeadlines(self.name, self.request_deadline_s)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("event=%s-busy peer=%s limit=%d", self.name, client_address[0], self.max_connections)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.deadlines.arm(request, client_address[0])
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.deadlines.disarm(request)
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("event=%s-request-failed peer=%s", self.name, client_address[0])
