"""The Greengrass discovery API served by the gateway itself: `GET /greengrass/discover/thing/<thing>`
over mutual TLS with the device's certificate, answered in AWS's JSON shape (the group, the core's
connectivity info and the group CA), so a device SDK's discovery client can be pointed at the gateway.

It reads the CA files and the device registry; it issues nothing and never changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway import device_registry
from gateway.bounded_http import BoundedThreadingHTTPServer
from gateway.ca import CaError, load_ca, now_utc
from gateway.config import GatewayConfig
from gateway.device_registry import RegistryCorrupt
from gateway.ip_detector import interface_addresses
from gateway.paths import GatewayPaths

log = logging.getLogger(__name__)

PATH = re.compile(r"/greengrass/discover/thing/([^/]+)")
HANDSHAKE_TIMEOUT_S = 10.0  # per read
# a whole connection (handshake and request) from the plant network: devices discover in one request,
# and a client trickling bytes must not keep one of the MAX_CONNECTIONS for ever
CONNECTION_DEADLINE_S = 30.0
MAX_CONNECTIONS = 32
BIND_RETRY_S = 10.0


def connectivity(config: GatewayConfig, detected: list[str] | None = None) -> list[dict[str, Any]]:
    """The core's connectivity info: the configured `discovery.addresses`, else every detected
    interface address (the IP detector) on the broker's TLS port."""
    if config.discovery.addresses:
        pairs = [(entry.rsplit(":", 1)[0], int(entry.rsplit(":", 1)[1])) for entry in config.discovery.addresses]
    else:
        addresses = interface_addresses() if detected is None else detected
        pairs = [(address, config.broker.tls_port) for address in addresses]
    return [{"Id": f"{host}:{port}", "HostAddress": host, "PortNumber": port, "Metadata": ""} for host, port in pairs]


def discover_response(config: GatewayConfig, ca_pem: str, detected: list[str] | None = None) -> dict[str, Any]:
    """The body AWS IoT Greengrass returns: GGGroups -> GGGroupId, Cores (thingArn, Connectivity), CAs."""
    thing = config.gateway.thing_name
    return {
        "GGGroups": [
            {
                "GGGroupId": config.discovery.group_id or thing,
                "Cores": [
                    {
                        "thingArn": config.discovery.core_thing_arn or f"arn:aws:iot:::thing/{thing}",
                        "Connectivity": connectivity(config, detected),
                    }
                ],
                "CAs": [ca_pem],
            }
        ]
    }


class _Contexts:
    """The server's TLS context, rebuilt when the CA, CRL or server certificate files change (a
    rotation, a revocation, a renewal), so every new connection sees the current trust."""

    def __init__(self, paths: GatewayPaths):
        self.paths = paths
        self._key: tuple[int, ...] = ()
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def _stamp(self) -> tuple[int, ...]:
        files = (self.paths.ca_cert, self.paths.crl_file, self.paths.server_cert, self.paths.server_key)
        return tuple(f.stat().st_mtime_ns for f in files)

    def current(self) -> ssl.SSLContext:
        with self._lock:
            stamp = self._stamp()
            if self._context is None or stamp != self._key:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(self.paths.server_cert, self.paths.server_key)
                context.load_verify_locations(cafile=str(self.paths.ca_cert))
                context.load_verify_locations(cafile=str(self.paths.crl_file))
                context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
                # optional: a client without a certificate gets AWS's 403, not a bare TLS failure;
                # a certificate that is presented must verify, or the handshake fails
                context.verify_mode = ssl.CERT_OPTIONAL
                self._context, self._key = context, stamp
            return self._context


class _Server(BoundedThreadingHTTPServer):
    name = "discovery"
    request_deadline_s = CONNECTION_DEADLINE_S

    def __init__(self, address: tuple[str, int], owner: DiscoveryServer):
        self.owner = owner
        super().__init__(address, _Handler, MAX_CONNECTIONS)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        # the handshake runs in the connection's own thread, so a slow client cannot stall accept
        context = self.owner.contexts.current()
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "millgate-discovery"
    sys_version = ""

    def handle(self) -> None:
        peer = self.client_address[0]
        try:
            self.request.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            log.warning("event=discovery-refused peer=%s reason=%r", peer, exc.verify_message)
            return
        except (ssl.SSLError, OSError) as exc:
            log.info("event=discovery-handshake-failed peer=%s reason=%r", peer, str(exc))
            return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=discovery-http peer=%s %s", self.client_address[0], format % args)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        # lower case as AWS sends them: the v1 Python SDK matches `content-length: ` case-sensitively
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        match = PATH.fullmatch(urlsplit(self.path).path)
        if not match:
            self._reply(404, {"errorMessage": f"no such resource: {self.path}"})
            return
        thing = unquote(match.group(1))
        status, body = self.server.owner.answer(thing, self.request.getpeercert())
        log.info("event=discovery peer=%s thing=%s status=%d", self.client_address[0], thing, status)
        self._reply(status, body)


def _common_name(peer: dict[str, Any] | None) -> str | None:
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class DiscoveryServer:
    """Serves discovery on `discovery.port` until `run`'s stop event is set."""

    def __init__(self, paths: GatewayPaths, config: GatewayConfig, host: str = ""):
        self.paths = paths
        self.config = config
        self.host = host
        self.contexts = _Contexts(paths)
        self.state = "starting"
        self.last_error: str | None = None

    def answer(self, thing: str, peer: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        """(status, body) for a discovery request about `thing` from a peer with this certificate."""
        caller = _common_name(peer)
        if caller is None:
            return 403, {"errorMessage": "a client certificate from the group CA is required"}
        if caller != thing:
            # refused before any lookup, as AWS answers 403 to a device without greengrass:Discover on
            # that thing: whether another thing is enrolled is none of the caller's business
            return 403, {"errorMessage": f"this certificate (CN={caller}) may not discover thing {thing}"}
        try:
            ca = load_ca(self.paths)
            records = device_registry.load_records(self.paths.device_registry)
        except (CaError, RegistryCorrupt) as exc:
            log.error("event=discovery-unavailable reason=%s", exc)
            return 500, {"errorMessage": "the gateway cannot read its device registry"}
        now = now_utc()
        if not any(r.thing == thing and r.state(ca.serial, now) == "valid" for r in records):
            return 404, {"errorMessage": f"thing {thing} is not a device of this group"}
        return 200, discover_response(self.config, ca.pem.decode())

    async def run(self, stop: asyncio.Event) -> None:
        if not self.config.discovery.enabled:
            return
        address = (self.host, self.config.discovery.port)
        while not stop.is_set():
            try:
                server = _Server(address, self)
            except OSError as exc:
                if self.state != "failed":
                    log.error("event=discovery-bind-failed port=%d reason=%s", address[1], exc.strerror or exc)
                self.state, self.last_error = "failed", str(exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BIND_RETRY_S):
                        await stop.wait()
                continue
            self.state, self.last_error = "serving", None
            log.info("event=discovery-serving port=%d", address[1])
            thread = threading.Thread(target=server.serve_forever, args=(0.2,), name="discovery", daemon=True)
            thread.start()
            try:
                await stop.wait()
            finally:
                await asyncio.to_thread(server.shutdown)
                server.server_close()
                thread.join(timeout=2)
            self.state = "stopped"
