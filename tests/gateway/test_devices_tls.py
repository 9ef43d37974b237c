"""Devices on the mutual-TLS listener (issue 3): an enrolled device connects as its thing name; an
expired, not-yet-valid, wrong-CA, self-signed, revoked or missing client certificate is refused with
the reason; a CA rotation ends the old trust; a server-certificate renewal keeps local clients.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import ca as group_ca
from gateway.config_loader import load_config
from tests.fixtures.gateway import RunningGateway, wait_until
from tests.fixtures.tls_devices import (
    DeviceClient,
    DeviceFiles,
    enrol,
    foreign_ca_device,
    free_port,
    gateway_on,
    peer_certificate,
    self_signed_device,
    tls_outcome,
)


def gateway_toml(tls_port: int, extra: str = "") -> str:
    return f"""
[gateway]
thing_name = "tls-gw"
status_interval_s = 0.5

[broker]
tls_port = {tls_port}
hostnames = ["gw.plant.example"]
{extra}

[discovery]
port = {free_port()}

[[subscriptions]]
source = "device:press-01"
target = "function:sink"
topic = "devices/press-01/telemetry"

[[functions]]
name = "sink"
code = "functions/sink"
handler = "main.function_handler"
run_as = "1001:1001"
"""


FILES = {"functions/sink/main.py": "def function_handler(event, context):\n    return None\n"}


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    port = free_port()
    with gateway_on(gateway_toml(port), files=FILES) as running:
        running.tls_port = port  # type: ignore[attr-defined]
        yield running


def cli_enrol(gw: RunningGateway, thing: str, out: Path, *extra: str) -> DeviceFiles:
    result = gw.cli("device", "add", thing, "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return DeviceFiles(thing, out / f"{thing}.cert.pem", out / f"{thing}.key.pem", out / "group-ca.pem")


def operator_watching(gw: RunningGateway, topic_filter: str) -> list[str]:
    received: list[str] = []
    operator = gw.client("operator")
    operator.on_message = lambda _c, _u, m: received.append(m.topic)
    done = threading.Event()
    operator.on_subscribe = lambda *_: done.set()
    operator.subscribe(topic_filter, qos=1)
    assert done.wait(5)
    return received


def broker_log(gw: RunningGateway) -> str:
    return gw.paths.component_log("broker").read_text()


# mosquitto 2.0 logs a refused handshake as "Client connection from <addr> failed: <reason>" when it
# fails inside accept, or as "OpenSSL Error[0]: <reason>" when it fails on the first read: which one
# depends on how far the handshake got before the broker's next poll
TLS_REFUSAL_LINE = re.compile(r"OpenSSL Error\[\d+\]|Client connection from \S+ failed")


def refusals_logged(gw: RunningGateway) -> int:
    return len(TLS_REFUSAL_LINE.findall(broker_log(gw)))


def test_enrolled_device_connects_as_its_thing_name_and_publishes_its_whitelisted_topic(gw, short_tmp) -> None:
    files = cli_enrol(gw, "press-01", short_tmp / "press-01")
    assert files.key.stat().st_mode & 0o777 == 0o600
    received = operator_watching(gw, "devices/#")
    device = DeviceClient(gw.tls_port, files, client_id="pretending-to-be-core").connect()
    try:
        assert device.publish_reason("devices/press-01/telemetry") == "Success"
        assert device.publish_reason("devices/press-02/telemetry") == "Not authorized"
        wait_until(lambda: received, 5, "the device's message")
        assert received == ["devices/press-01/telemetry"]
    finally:
        device.close()
    # the certificate's CN is the identity and the client id, whatever the device asked for
    wait_until(lambda: "as press-01 (p5" in broker_log(gw), 5, "the broker's connection line")
    assert "pretending-to-be-core" not in broker_log(gw)


def test_server_certificate_verifies_for_loopback_localhost_and_configured_names(gw, short_tmp) -> None:
    files = enrol(gw.paths, "namecheck", short_tmp)
    for host in ("127.0.0.1", "localhost", "gw.plant.example"):
        cert = peer_certificate(gw.tls_port, files, host=host)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tls-gw"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=7) <= lifetime <= timedelta(days=7, minutes=10)


def test_device_with_its_own_csr_connects_and_no_key_is_written(gw, short_tmp) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "press-csr")]))
        .sign(key, hashes.SHA256())
    )
    csr_file = short_tmp / "press-csr.csr"
    csr_file.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    out = short_tmp / "csr-out"
    files = cli_enrol(gw, "press-csr", out, "--csr", str(csr_file), "--days", "3")
    assert not files.key.exists()
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    issued = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert issued.public_key() == key.public_key()
    assert timedelta(days=3) <= issued.not_valid_after_utc - issued.not_valid_before_utc <= timedelta(days=3, hours=1)
    assert tls_outcome(gw.tls_port, files, files.ca) == "accepted"


def device_check(gw: RunningGateway, files: DeviceFiles) -> tuple[int, dict]:
    result = gw.cli("device", "check", str(files.cert), "--json")
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize(
    ("kind", "reason", "explained"),
    [
        ("expired", "certificate expired", "expired on "),
        ("not-yet-valid", "bad certificate", "not yet valid: valid from "),
        ("wrong-ca", "unknown ca", "issued by another CA"),
        ("self-signed", "unknown ca", "self-signed"),
        ("no-certificate", "certificate required", ""),
    ],
)
def test_bad_client_certificates_are_refused_with_the_reason(
    gw, short_tmp, kind: str, reason: str, explained: str
) -> None:
    thing = f"bad-{kind}"
    trust = gw.paths.ca_cert
    files: DeviceFiles | None
    if kind == "expired":
        files = enrol(gw.paths, thing, short_tmp, days=1, offset=timedelta(days=-2))
    elif kind == "not-yet-valid":
        files = enrol(gw.paths, thing, short_tmp, days=1, offset=timedelta(days=2))
    elif kind == "wrong-ca":
        files = foreign_ca_device(gw.paths, thing, short_tmp)
    elif kind == "self-signed":
        files = self_signed_device(gw.paths, thing, short_tmp)
    else:
        files = None
    before = refusals_logged(gw)
    assert reason in tls_outcome(gw.tls_port, files, trust)
    # paho sees the refusal too: no CONNACK ever arrives
    if files is not None:
        with pytest.raises((ConnectionError, OSError)):
            DeviceClient(gw.tls_port, files).connect(timeout_s=1.0)
    wait_until(lambda: refusals_logged(gw) > before, 20, "the broker to log the refusal")
    # mosquitto 2.0.11 logs only "certificate verify failed" whatever the reason; the operator's tool
    # names it (docs/operations.md, "Add a device")
    if files is not None:
        code, verdict = device_check(gw, files)
        assert code == 1 and verdict["thing"] == thing and not verdict["accepted"]
        assert verdict["reason"].startswith(explained), verdict


def test_revoked_device_is_refused_and_others_still_connect(gw, short_tmp) -> None:
    revoked = cli_enrol(gw, "press-revoked", short_tmp / "r")
    other = cli_enrol(gw, "press-other", short_tmp / "o")
    assert tls_outcome(gw.tls_port, revoked, revoked.ca) == "accepted"
    code, verdict = device_check(gw, revoked)
    assert code == 0 and verdict["accepted"] and verdict["reason"].startswith("valid until "), verdict
    result = gw.cli("device", "revoke", "press-revoked")
    assert result.returncode == 0, result.stderr
    assert "broker reloaded" in result.stdout
    wait_until(
        lambda: "certificate revoked" in tls_outcome(gw.tls_port, revoked, revoked.ca), 5, "the revocation to apply"
    )
    assert tls_outcome(gw.tls_port, other, other.ca) == "accepted"
    code, verdict = device_check(gw, revoked)
    assert code == 1 and verdict["reason"].startswith("revoked on "), verdict
    listed = json.loads(gw.cli("device", "list", "--json").stdout)
    states = {row["thing"]: row["state"] for row in listed}
    assert states["press-revoked"] == "revoked"
    assert states["press-other"] == "valid"
    again = gw.cli("device", "revoke", "press-revoked")
    assert again.returncode == 1
    assert "no current certificate" in again.stderr


def test_device_connected_before_its_revocation_loses_its_grants_at_once(gw, short_tmp) -> None:
    files = cli_enrol(gw, "press-01", short_tmp / "p1")
    device = DeviceClient(gw.tls_port, files).connect()
    try:
        assert device.publish_reason("devices/press-01/telemetry") == "Success"
        assert gw.cli("device", "revoke", "press-01").returncode == 0
        wait_until(
            lambda: device.publish_reason("devices/press-01/telemetry") == "Not authorized",
            10,
            "the revoked device's publish to be refused on its existing connection",
        )
        reissued = cli_enrol(gw, "press-01", short_tmp / "p2")
        again = DeviceClient(gw.tls_port, reissued, client_id="press-01").connect()
        try:
            wait_until(
                lambda: again.publish_reason("devices/press-01/telemetry") == "Success",
                10,
                "a re-issued certificate to get the grants back",
            )
        finally:
            again.close()
    finally:
        device.close()


def test_ca_rotation_refuses_old_device_certificates_and_reissues_the_server(gateway_factory, short_tmp) -> None:
    port = free_port()
    gw = gateway_factory(gateway_toml(port), files=FILES)
    old_files = cli_enrol(gw, "press-01", short_tmp / "old")
    device = DeviceClient(port, old_files).connect()
    old_ca = gw.paths.ca_cert.read_bytes()

    result = gw.cli("ca", "rotate")
    assert result.returncode == 0, result.stderr
    assert "broker restarted" in result.stdout
    new_ca = group_ca.load_ca(gw.paths)
    assert new_ca.pem != old_ca

    wait_until(lambda: device.disconnects, 10, "the old connection to be closed")
    device.close()
    # the broker refuses the old certificate even from a device that already trusts the new CA
    old_cert_new_trust = DeviceFiles("press-01", old_files.cert, old_files.key, gw.paths.ca_cert)
    wait_until(lambda: tls_outcome(port, old_cert_new_trust, gw.paths.ca_cert) != "connection refused", 10, "broker")
    assert "unknown ca" in tls_outcome(port, old_cert_new_trust, gw.paths.ca_cert)
    rotated = gw.cli("device", "check", str(old_files.cert))
    assert rotated.returncode == 1 and "issued by a group CA since rotated away" in rotated.stdout
    # a device that still trusts only the old CA refuses the re-issued server certificate
    assert "certificate verify failed" in tls_outcome(port, old_cert_new_trust, old_files.ca)

    server = group_ca.load_server_cert(gw.paths)
    assert server is not None and server.issuer == new_ca.cert.subject
    new_files = cli_enrol(gw, "press-01", short_tmp / "new")
    assert tls_outcome(port, new_files, new_files.ca) == "accepted"
    states = [row["state"] for row in json.loads(gw.cli("device", "list", "--json").stdout)]
    assert states == ["old-ca", "valid"]
    # local components found the restarted broker again by themselves
    wait_until(lambda: gw.status()["components"].get("core", {}).get("state") == "online", 10, "the core")


def _csr_file(thing: str, directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing)]))
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{thing}.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_ca_rotation_reissues_every_enrolled_device_and_names_those_that_need_a_csr(gateway_factory, short_tmp) -> None:
    port = free_port()
    gw = gateway_factory(gateway_toml(port), files=FILES)
    old = {thing: cli_enrol(gw, thing, short_tmp / "old" / thing) for thing in ("press-01", "press-02", "press-03")}
    cli_enrol(gw, "press-csr", short_tmp / "old" / "press-csr", "--csr", str(_csr_file("press-csr", short_tmp)))
    assert gw.cli("device", "revoke", "press-03").returncode == 0

    out = short_tmp / "reissued"
    result = gw.cli("ca", "rotate", "--reissue-devices", str(out), "--days", "5")
    assert result.returncode == 0, result.stderr
    assert "re-issued press-01" in result.stdout and "re-issued press-02" in result.stdout
    assert "enrolled with their own CSR: press-csr" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["press-01", "press-02"]  # not the revoked one
    new = {
        t: DeviceFiles(t, out / t / f"{t}.cert.pem", out / t / f"{t}.key.pem", out / t / "group-ca.pem") for t in old
    }
    assert new["press-01"].key.stat().st_mode & 0o777 == 0o600
    assert new["press-01"].ca.read_bytes() == gw.paths.ca_cert.read_bytes()

    wait_until(lambda: tls_outcome(port, new["press-01"], new["press-01"].ca) != "connection refused", 10, "broker")
    for thing in ("press-01", "press-02"):
        assert tls_outcome(port, new[thing], new[thing].ca) == "accepted", thing
        old_cert_new_trust = DeviceFiles(thing, old[thing].cert, old[thing].key, gw.paths.ca_cert)
        assert "unknown ca" in tls_outcome(port, old_cert_new_trust, gw.paths.ca_cert), thing
    states = {(row["thing"], row["state"]) for row in json.loads(gw.cli("device", "list", "--json").stdout)}
    assert ("press-01", "valid") in states and ("press-02", "valid") in states
    assert ("press-03", "valid") not in states and ("press-csr", "valid") not in states


def test_server_certificate_is_renewed_and_reloaded_without_dropping_clients(gateway_factory, short_tmp) -> None:
    port = free_port()
    gw = gateway_factory(gateway_toml(port, extra="server_cert_check_s = 0.2"), files=FILES)
    device_files = cli_enrol(gw, "press-01", short_tmp / "dev")
    device = DeviceClient(port, device_files).connect()
    local_disconnects: list[object] = []
    operator = gw.client("operator")
    operator.on_disconnect = lambda *args: local_disconnects.append(args)
    served_before = peer_certificate(port, device_files)

    # a certificate at the end of its life, as if the gateway had been running for days
    config = load_config(gw.config_dir).gateway
    now = group_ca.now_utc()
    ca = group_ca.load_ca(gw.paths)
    aged = group_ca.issue_server_cert(
        gw.paths, ca, config, None, not_before=now - timedelta(days=6), not_after=now + timedelta(hours=2)
    )

    def renewed() -> x509.Certificate | None:
        current = group_ca.load_server_cert(gw.paths)
        return current if current and current.serial_number != aged.serial_number else None

    fresh = wait_until(renewed, 10, "the core to renew the server certificate")
    assert isinstance(fresh, x509.Certificate)
    assert fresh.not_valid_after_utc - now > timedelta(days=6, hours=23)
    wait_until(
        lambda: peer_certificate(port, device_files).serial_number == fresh.serial_number, 5, "the broker to reload"
    )
    assert served_before.serial_number != fresh.serial_number
    assert local_disconnects == []
    assert device.disconnects == []
    assert device.publish_reason("devices/press-01/telemetry") == "Success"
    device.close()
    assert "event=server-cert-renewed" in gw.paths.component_log("core").read_text()
