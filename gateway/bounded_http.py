"""A threaded HTTP server that takes at most a fixed number of connections at once and refuses the
rest (logged), for the gateway's loopback and plant-facing HTTP endpoints. It serves; routing is the
handler's job.
"""

from __future__ import annotations

import logging
import threading
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    name = "http"  # in log events: event=<name>-busy, event=<name>-request-failed

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int):
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("event=%s-busy peer=%s limit=%d", self.name, client_address[0], self.max_connections)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("event=%s-request-failed peer=%s", self.name, client_address[0])
