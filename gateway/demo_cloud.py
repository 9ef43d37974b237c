"""The demo's stand-in for AWS IoT Core: a throwaway CA, a server certificate for localhost, the
gateway's client certificate, and a mosquitto on 127.0.0.1 that requires mutual TLS. For the demo and
the tests only; a real gateway talks to AWS IoT with the thing's own certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.broker_config import mosquitto_binary

LIFETIME = datetime.timedelta(days=30)


@dataclass(frozen=True)
class CloudPki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def make_cloud_pki(directory: Path, client_cn: str) -> CloudPki:
    """Create (or reuse, if complete) the cloud's CA, server certificate and the gateway's certificate."""
    pki = CloudPki(
        directory / "cloud-ca.pem",
        directory / "cloud-server.pem",
        directory / "cloud-server.key",
        directory / "thing.pem.crt",
        directory / "thing.pem.key",
    )
    if all(path.exists() for path in vars(pki).values()):
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _issue("millgate demo cloud CA", ca_key, _name("millgate demo cloud CA"), ca_key, ca=True)
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = _issue("localhost", server_key, ca.subject, ca_key, server=True)
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    client = _issue(client_cn, client_key, ca.subject, ca_key)
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


class LineProxy:
    """The line between the plant and the cloud: a TCP relay from 127.0.0.1:`port` to `target` that
    can be cut (`down`) and restored (`up`), as a userland stand-in for a WAN outage."""

    def __init__(self, port: int, target: int):
        self.port, self.target = port, target
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() blocked in the other thread
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.close()
        self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


class DemoCloud:
    """A TLS mosquitto on 127.0.0.1:`port` that accepts clients with a certificate from the cloud CA."""

    def __init__(self, pki: CloudPki, workdir: Path, port: int):
        self.pki, self.workdir, self.port = pki, workdir, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "cloud.conf"
        conf.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    *(["user root"] if os.geteuid() == 0 else []),
                    "allow_anonymous true",
                    "persistence false",
                    "max_queued_messages 1000000",
                    "log_dest stderr",
                    f"listener {self.port} 127.0.0.1",
                    f"cafile {self.pki.ca}",
                    f"certfile {self.pki.server_cert}",
                    f"keyfile {self.pki.server_key}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "",
                ]
            )
        )
        log = (self.workdir / "cloud.log").open("ab")
        self.process = subprocess.Popen([str(mosquitto_binary()), "-c", str(conf)], stdout=log, stderr=log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        self.process = None
