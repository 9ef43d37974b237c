"""Fixtures for the uplink: a throwaway PKI, a second mosquitto with a client-certificate TLS listener
on 127.0.0.1 that plays the cloud (stoppable and restartable on the same port), and moto's S3 server.
Everything started here is stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.properties import Properties

from gateway.credentials import load_credentials
from gateway.mqtt_blocking import connect_blocking, paho_client
from tests.fixtures.gateway import HeldPort, RunningGateway, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _cert(subject: str, key, issuer_name: x509.Name | None, issuer_key, *, ca: bool = False, server: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that did not sign the server: TLS must fail against it


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    # readable by whatever user the uplink and mosquitto end up running as (throwaway keys)
    root = Path(tempfile.mkdtemp(prefix="mgpki", dir="/tmp"))
    yield make_pki(root)
    shutil.rmtree(root, ignore_errors=True)


def make_pki(root: Path) -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (CN test-gw)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    ca_key, other_key = _key(), _key()
    ca = _cert("millgate test cloud CA", ca_key, None, ca_key, ca=True)
    other = _cert("some other CA", other_key, None, other_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, ca.subject, ca_key, server=True)
    client = _cert("test-gw", client_key, ca.subject, ca_key)
    paths = Pki(
        root,
        root / "ca.pem",
        root / "server.pem",
        root / "server.key",
        root / "client.pem",
        root / "client.key",
        root / "other-ca.pem",
    )
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, paths.server_key)
    _write_key(client_key, paths.client_key)
    for item in root.iterdir():
        item.chmod(0o644)
    return paths


@dataclass
class CloudBroker:
    """mosquitto on 127.0.0.1:port with TLS and required client certificates."""

    pki: Pki
    dir: Path
    port: int
    deny: tuple[str, ...] = ()
    max_payload: int = 0
    process: subprocess.Popen[bytes] | None = None
    clients: list[paho.Client] = field(default_factory=list)
    held: HeldPort | None = None  # the port while stopped: the uplink's reconnects cannot take it

    def start(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None
        acl = self.dir / "acl"
        # `pattern` lines apply to every client (`topic` lines before any `user` only to anonymous ones)
        acl.write_text(
            "".join(f"pattern deny {t}\n" for t in self.deny) + "pattern readwrite #\npattern readwrite $aws/#\n"
        )
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    *(["user root"] if os.geteuid() == 0 else []),
                    "allow_anonymous true",
                    f"acl_file {acl}",
                    "persistence false",
                    "max_queued_messages 1000000",
                    "max_inflight_messages 1000",
                    *([f"message_size_limit {self.max_payload}"] if self.max_payload else []),
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
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
        log = (self.dir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"cloud mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 10, "the cloud broker to listen")

    def stop(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()
        self.clients.clear()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.held = HeldPort(self.port)
        self.process = None

    def toml(self, port: int | None = None, **extra: object) -> str:
        """The [cloud] section pointing the uplink at this broker (or at `port`, a proxy to it)."""
        lines = [
            "[cloud]",
            'endpoint = "localhost"',
            f"port = {port or self.port}",
            f'ca_file = "{self.pki.ca}"',
            f'cert_file = "{self.pki.client_cert}"',
            f'key_file = "{self.pki.client_key}"',
            "reconnect_initial_s = 0.1",
            "reconnect_max_s = 0.5",
        ]
        for key, value in extra.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        return "\n".join(lines) + "\n"

    def subscriber(self, topic_filter: str, client_id: str = "checker") -> Collector:
        """A TLS client subscribed at QoS 1 that collects (topic, payload) in arrival order."""
        collector = Collector()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        client.tls_set_context(context)
        subscribed = threading.Event()
        client.on_message = lambda _c, _u, m: collector.add(m.topic, m.payload, m.properties)
        client.on_subscribe = lambda *_a: subscribed.set()
        client.on_connect = lambda c, *_a: c.subscribe(topic_filter, qos=1)
        client.connect("localhost", self.port)
        client.loop_start()
        self.clients.append(client)
        assert subscribed.wait(10), "the checker could not subscribe on the cloud broker"
        collector.client = client
        return collector


@dataclass
class Collector:
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    properties: list[Properties | None] = field(default_factory=list)  # each message's, same order
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: paho.Client | None = None

    def add(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        with self.lock:
            self.messages.append((topic, payload))
            self.properties.append(properties)

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def __len__(self) -> int:
        with self.lock:
            return len(self.messages)


@pytest.fixture
def cloud_broker(pki: Pki, short_tmp: Path) -> Iterator[CloudBroker]:
    """A cloud broker, not yet started: call .start() (tests of outages start it late)."""
    broker_dir = short_tmp / "cloud"
    broker_dir.mkdir()
    port = free_port()
    broker = CloudBroker(pki, broker_dir, port, held=HeldPort(port))
    yield broker
    broker.stop()
    if broker.held is not None:
        broker.held.release()


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3 over real HTTP on 127.0.0.1; yields the endpoint URL. Dummy credentials in the env."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def publish_many(client: paho.Client, messages: list[tuple[str, bytes]], timeout_s: float = 60) -> None:
    """Publish at QoS 1 and wait until the local broker acknowledged every one (in chunks: paho's
    message ids are 16 bits, so no more than 65535 may be outstanding)."""
    deadline = time.monotonic() + timeout_s
    for start in range(0, len(messages), 20_000):
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages[start : start + 20_000]]
        for info in infos:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.1))
            assert info.is_published(), "the local broker did not acknowledge a publish"


def local_publisher(gw: RunningGateway, identity: str = "core") -> paho.Client:
    """A client of the gateway's local broker with a wide QoS 1 window (paho's default is 20)."""
    creds = load_credentials(gw.paths.credentials_dir, identity)
    client = paho_client(creds, f"test-pub-{time.time_ns()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connect_blocking(client, gw.paths.broker_socket)
    gw.clients.append(client)
    return client


@pytest.fixture
def uplink_gateway(gateway_factory) -> Iterator[Callable[..., RunningGateway]]:
    """gateway_factory that expects the uplink running and prints its log at teardown (shown on failure)."""
    started: list[RunningGateway] = []

    def factory(gateway_toml: str, **kwargs: object) -> RunningGateway:
        kwargs.setdefault("expect", ("broker", "core", "uplink"))
        gw = gateway_factory(gateway_toml, **kwargs)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        log = gw.paths.component_log("uplink")
        if log.exists():
            print(f"---- {log} (last 60 lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))


class LinkProxy:
    """A userland TCP proxy on 127.0.0.1 that can cut the line (the machine has no netem): while down,
    every connection is closed and new ones are refused at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.is_up = threading.Event()
        self.closed = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def up(self) -> None:
        self.is_up.set()

    def down(self) -> None:
        self.is_up.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.closed = True
        self.down()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.is_up.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def link_proxy(cloud_broker: CloudBroker) -> Iterator[LinkProxy]:
    """A cuttable line to the cloud broker (start the broker first); starts down."""
    proxy = LinkProxy(cloud_broker.port)
    yield proxy
    proxy.close()


class HangUpProxy:
    """A TLS-terminating proxy to the cloud broker that hangs up on the client when a client packet
    carries `poison`, as AWS IoT does on an unauthorized publish (ordinary TCP proxies cannot see into
    TLS). What came before the poison is passed on and the broker gets a moment to answer it first.
    Runs its own event loop in a thread; `close` stops it."""

    ANSWER_S = 0.3

    def __init__(self, broker: CloudBroker, poison: bytes):
        self.broker = broker
        self.poison = poison
        self.hang_ups = 0
        self.loop = asyncio.new_event_loop()
        self.server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_tls.load_cert_chain(str(broker.pki.server_cert), str(broker.pki.server_key))
        self.server_tls.verify_mode = ssl.CERT_REQUIRED
        self.server_tls.load_verify_locations(str(broker.pki.ca))
        self.client_tls = ssl.create_default_context(cafile=str(broker.pki.ca))
        self.client_tls.load_cert_chain(str(broker.pki.client_cert), str(broker.pki.client_key))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.server_tls), self.loop
        ).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.broker.port, ssl=self.client_tls, server_hostname="localhost"
            )
        except OSError:
            writer.close()
            return

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        answers = asyncio.ensure_future(down())
        try:
            while data := await reader.read(65536):
                at = data.find(self.poison)
                up_writer.write(data if at < 0 else data[:at])
                await up_writer.drain()
                if at >= 0:
                    self.hang_ups += 1
                    await asyncio.sleep(self.ANSWER_S)
                    break
        except (OSError, ssl.SSLError):
            pass
        finally:
            answers.cancel()
            for stream in (writer, up_writer):
                stream.transport.abort()
