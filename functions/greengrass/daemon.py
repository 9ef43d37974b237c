"""The Greengrass v1 HTTP API on 127.0.0.1:<daemon_port> (GG_DAEMON_PORT): plain HTTP/1.1 as the v1
IPC client and botocore speak it, one thread per connection (work requests are long polls), each
request handed to the service on the core's event loop.

It only carries requests and answers; every decision is the service's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import threading
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from functions.greengrass.service import ApiRequest, ApiResponse, GreengrassService
from gateway.bounded_http import BoundedThreadingHTTPServer

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_BODY_BYTES = 8 * 1024 * 1024  # v1 allowed 6 MB to a local Lambda; mosquitto caps MQTT lower
MAX_CONNECTIONS = 512  # each v1 worker holds one long poll
# a connection that sends nothing for this long (no request line, headers or body) is dropped, and
# one whose request has not fully arrived within REQUEST_DEADLINE_S, so sockets left idle or fed a
# byte at a time by any local process cannot hold the connection slots every v1 function needs
READ_TIMEOUT_S = 5.0
REQUEST_DEADLINE_S = 20.0
PEER_CHECK_S = 0.5  # how often a waiting long poll looks whether its worker is still there
BIND_RETRY_S = 10.0


def peer_gone(connection: socket.socket) -> bool:
    """Whether the client closed its end (or reset it): nobody is left to read an answer."""
    # poll, not a non-blocking recv: a socket with a timeout waits that long for data despite MSG_DONTWAIT
    poller = select.poll()
    poller.register(connection, select.POLLIN)
    events = poller.poll(0)
    if not events:
        return False
    if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
        return True
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""  # readable: EOF, or a request sent early
    except OSError:
        return True


class _Server(BoundedThreadingHTTPServer):
    name = "greengrass-api"
    request_deadline_s = REQUEST_DEADLINE_S

    def __init__(self, port: int, service: GreengrassService, loop: asyncio.AbstractEventLoop):
        self.service = service
        self.loop = loop
        super().__init__((HOST, port), _Handler, MAX_CONNECTIONS)

    def answer(self, request: ApiRequest, connection: socket.socket) -> ApiResponse | None:
        """Run the service's handler on the core's loop and wait (work requests wait for work); None
        if the client went away meanwhile (its request is then withdrawn)."""
        try:
            pending: Future[ApiResponse] = asyncio.run_coroutine_threadsafe(self.service.handle(request), self.loop)
        except RuntimeError:  # the loop is shutting down
            return ApiResponse(503, b'{"message": "the gateway is stopping"}')
        while True:
            try:
                return pending.result(PEER_CHECK_S)
            except TimeoutError:
                pass
            # a long poll (GET) whose worker died must not take the next work item to a closed connection
            if request.method == "GET" and peer_gone(connection) and pending.cancel():
                log.info("event=greengrass-poll-withdrawn peer=%s path=%s", request.peer, request.path)
                return None

    def give_back(self, response: ApiResponse) -> None:
        """`response` carried work its worker never got: return it to its slot, on the core's loop."""
        if response.undelivered is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway is stopping anyway
                self.loop.call_soon_threadsafe(response.undelivered)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT_S  # per read and write on the connection; a long poll's wait reads nothing
    protocol_version = "HTTP/1.1"
    server_version = "millgate-greengrass"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=greengrass-http peer=%s %s", self.client_address[0], format % args)

    def handle_one_request(self) -> None:
        # each request must arrive whole within the deadline; a long poll's wait for work is not timed
        self.server.deadlines.arm(self.connection, self.client_address[0])
        super().handle_one_request()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(ApiResponse(413, b'{"message": "request body missing a valid Content-Length or too large"}'))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        self.server.deadlines.disarm(self.connection)
        request = ApiRequest(
            self.command,
            urlsplit(self.path).path,
            {name.lower(): value for name, value in self.headers.items()},
            body,
            self.client_address[0],
        )
        response = self.server.answer(request, self.connection)
        if response is None:
            self.close_connection = True
            return
        if response.undelivered is not None and peer_gone(self.connection):
            self.server.give_back(response)  # the worker died as its work was found: the next one gets it
            self.close_connection = True
            return
        if not self._send(response):
            self.server.give_back(response)

    def _send(self, response: ApiResponse) -> bool:
        """Whether the response was written (not whether it was read)."""
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # a worker killed (timeout, stop) while its long poll was open: nobody left to answer
            log.debug("event=greengrass-api-peer-gone peer=%s status=%d", self.client_address[0], response.status)
            self.close_connection = True
            return False
        return True


async def serve(service: GreengrassService, stop: asyncio.Event) -> None:
    """Serve the API on every port a v1 function names until `stop`; a port in use is retried."""
    loop = asyncio.get_running_loop()
    servers: list[tuple[_Server, threading.Thread]] = []
    waiting = set(service.ports)
    failing: set[int] = set()
    try:
        while not stop.is_set():
            for port in sorted(waiting):
                try:
                    server = _Server(port, service, loop)
                except OSError as exc:
                    if port not in failing:
                        log.error("event=greengrass-api-bind-failed port=%d reason=%s", port, exc.strerror or exc)
                    failing.add(port)
                    continue
                failing.discard(port)
                waiting.discard(port)
                thread = threading.Thread(target=server.serve_forever, args=(0.2,), name=f"gg-api-{port}", daemon=True)
                thread.start()
                servers.append((server, thread))
                log.info("event=greengrass-api-serving address=%s:%d", HOST, port)
            if not waiting:
                await stop.wait()
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BIND_RETRY_S):
                    await stop.wait()
    finally:
        service.retire_all()  # long polls answer 410 instead of hanging on a stopped loop
        for server, thread in servers:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            thread.join(timeout=2)
