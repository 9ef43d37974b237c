"""The group CA (issue 3, items 1, 2 and 5): created on first start with private keys, a server
certificate naming every address and configured name, device certificates from a generated key or a
CSR (a malformed CSR is refused clearly), and a CA key with wrong permissions stopping the core.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway import ca as group_ca
from gateway.config_loader import load_config
from gateway.ip_detector import interface_addresses
from gateway.launch import prepare
from gateway.paths import GatewayPaths
from tests.fixtures.gateway import run_cli, wait_until
from tests.fixtures.tls_devices import free_port


def write_config(directory: Path, extra: str = "") -> Path:
    (directory / "adapters").mkdir(parents=True, exist_ok=True)
    (directory / "functions/fn1").mkdir(parents=True, exist_ok=True)
    (directory / "functions/fn1/main.py").write_text("def function_handler(event, context):\n    return None\n")
    (directory / "gateway.toml").write_text(
        f"""
[gateway]
thing_name = "ca-gw"
status_interval_s = 0.5

[broker]
tls_port = {free_port()}
server_cert_days = 3
hostnames = ["gw1.plant.example", "10.9.8.7"]

[discovery]
port = {free_port()}
{extra}

[[functions]]
name = "fn1"
code = "functions/fn1"
handler = "main.function_handler"
run_as = "1001:1001"
"""
    )
    return directory


@pytest.fixture
def prepared(short_tmp: Path) -> GatewayPaths:
    """A state dir as `millgate run` leaves it just before supervisord starts."""
    config = write_config(short_tmp / "etc")
    paths = GatewayPaths.resolve(config, short_tmp / "s", None)
    prepare(load_config(config), paths)
    return paths


def cli(paths: GatewayPaths, *args: str):  # type: ignore[no-untyped-def]
    return run_cli(*args, config=paths.config_dir, state=paths.state_dir)


def names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_first_start_creates_a_private_ca_and_a_server_cert_for_every_name(prepared: GatewayPaths) -> None:
    assert prepared.ca_dir.stat().st_mode & 0o777 == 0o700
    for key in (prepared.ca_key, prepared.server_key):
        info = key.stat()
        assert info.st_mode & 0o777 == 0o600, key
        assert info.st_uid == os.geteuid()  # the service user: whoever runs a dev checkout
    server = group_ca.load_server_cert(prepared)
    assert server is not None
    assert server.issuer == group_ca.load_ca(prepared).cert.subject
    assert {"localhost", "127.0.0.1", "::1", "gw1.plant.example", "10.9.8.7", *interface_addresses()} <= names(server)
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert timedelta(days=3) <= lifetime <= timedelta(days=3, minutes=10)
    conf = prepared.mosquitto_conf.read_text()
    for line in (
        f"cafile {prepared.ca_cert}",
        f"certfile {prepared.server_cert}",
        f"keyfile {prepared.server_key}",
        f"crlfile {prepared.crl_file}",
        "require_certificate true",
        "use_identity_as_username true",
    ):
        assert line in conf


def test_restart_keeps_the_ca_and_a_good_server_cert_but_reissues_for_new_names(prepared: GatewayPaths) -> None:
    ca_pem = prepared.ca_cert.read_bytes()
    serial = group_ca.load_server_cert(prepared).serial_number  # type: ignore[union-attr]
    prepare(load_config(prepared.config_dir), prepared)
    assert prepared.ca_cert.read_bytes() == ca_pem
    assert group_ca.load_server_cert(prepared).serial_number == serial  # type: ignore[union-attr]

    toml = prepared.config_dir / "gateway.toml"
    toml.write_text(toml.read_text().replace('"10.9.8.7"', '"10.9.8.7", "gw1-backup.plant.example"'))
    prepare(load_config(prepared.config_dir), prepared)
    renewed = group_ca.load_server_cert(prepared)
    assert renewed is not None and renewed.serial_number != serial
    assert "gw1-backup.plant.example" in names(renewed)
    assert prepared.ca_cert.read_bytes() == ca_pem


def test_renewal_is_due_past_the_configured_fraction_or_for_another_ca(prepared: GatewayPaths) -> None:
    config = load_config(prepared.config_dir).gateway
    ca = group_ca.load_ca(prepared)
    now = group_ca.now_utc()
    assert group_ca.server_cert_renewal_reason(prepared, ca, config, now) is None
    assert group_ca.server_cert_renewal_reason(prepared, ca, config, now + timedelta(days=1, hours=12, minutes=1))
    assert group_ca.server_cert_renewal_reason(prepared, ca, config, now, detected=["192.0.2.77"]) == "lacks 192.0.2.77"
    other = group_ca.GroupCa(ca.cert, ca.key)
    group_ca.rotate_ca(prepared, config, None)
    assert group_ca.server_cert_renewal_reason(prepared, other, config, now) == "signed by another CA generation"


def test_device_add_writes_cert_private_key_and_group_ca(prepared: GatewayPaths, short_tmp: Path) -> None:
    out = short_tmp / "out"
    result = cli(prepared, "device", "add", "press-01", "--out", str(out), "--days", "30")
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((out / "press-01.cert.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "press-01"
    assert timedelta(days=30) <= cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=30, hours=1)
    assert (out / "press-01.key.pem").stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate((out / "group-ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    listed = json.loads(cli(prepared, "device", "list", "--json").stdout)
    assert [(r["thing"], r["state"], r["serial"]) for r in listed] == [("press-01", "valid", f"{cert.serial_number:x}")]


def _csr(key: object, cn: str) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def _tampered_csr() -> bytes:
    der = x509.load_pem_x509_csr(_csr(ec.generate_private_key(ec.SECP256R1()), "press-01")).public_bytes(
        serialization.Encoding.DER
    )
    at = der.index(b"press-01")
    return der[:at] + b"press-02" + der[at + 8 :]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: b"this is not a CSR\n", "not a certificate signing request"),
        (
            lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a certificate signing request",
        ),
        (_tampered_csr, "signature does not match"),
        (lambda: _csr(ec.generate_private_key(ec.SECP256R1()), "someone-else"), "CN is 'someone-else'"),
        (lambda: _csr(rsa.generate_private_key(65537, 1024), "press-01"), "RSA key of 1024 bits"),
    ],
    ids=["garbage", "bad-pem", "tampered", "wrong-cn", "weak-key"],
)
def test_malformed_csr_gets_a_clear_error_and_nothing_is_issued(
    prepared: GatewayPaths, short_tmp: Path, content, message: str
) -> None:
    csr = short_tmp / "device.csr"
    csr.write_bytes(content())
    result = cli(prepared, "device", "add", "press-01", "--csr", str(csr), "--out", str(short_tmp / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"millgate device add: {csr}: ")
    assert message in result.stderr
    assert not (short_tmp / "out").exists()
    assert json.loads(cli(prepared, "device", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("thing", "message"),
    [("core", "reserved"), ("ca-gw", "this gateway's own thing name"), ("bad/name", "not a thing name")],
)
def test_device_names_that_would_impersonate_or_break_are_refused(prepared: GatewayPaths, thing, message) -> None:
    result = cli(prepared, "device", "add", thing, "--out", str(prepared.state_dir / "x"))
    assert result.returncode == 2
    assert message in result.stderr


def test_ca_init_refuses_to_replace_and_show_prints_the_ca(prepared: GatewayPaths) -> None:
    again = cli(prepared, "ca", "init")
    assert again.returncode == 1
    assert "exists already" in again.stderr and "ca rotate" in again.stderr
    pem = cli(prepared, "ca", "show", "--pem")
    assert pem.stdout.encode() == prepared.ca_cert.read_bytes()
    shown = json.loads(cli(prepared, "ca", "show", "--json").stdout)
    assert "gw1.plant.example" in shown["server"]["names"]
    assert shown["ca"]["serial"] == f"{group_ca.load_ca(prepared).serial:x}"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to a function's uid needs root")
def test_a_function_uid_cannot_read_the_ca_key_or_any_component_secret(prepared: GatewayPaths) -> None:
    targets = [prepared.ca_key, prepared.server_key, prepared.device_registry.parent / "devices.json"]
    targets += [prepared.credentials_dir / "core.json", prepared.credentials_dir / "operator.json"]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.setgroups([])
        os.setgid(1001)
        os.setuid(1001)
        outcomes = []
        for target in targets:
            try:
                target.read_bytes()
                outcomes.append(f"READ {target}")
            except PermissionError:
                outcomes.append("denied")
            except FileNotFoundError:
                outcomes.append("denied")  # the ca dir is 0700: not even the name resolves
        os.write(write_end, json.dumps(outcomes).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as pipe:
        outcomes = json.loads(pipe.read())
    assert outcomes == ["denied"] * len(targets)
    # its own secret, on the other hand, is readable to it
    assert (prepared.credentials_dir / "function.fn1.json").stat().st_uid == 1001


def test_ca_key_with_wrong_permissions_stops_the_core_with_how_to_fix(gateway_factory, short_tmp: Path) -> None:
    gw = gateway_factory((write_config(short_tmp / "cfg").joinpath("gateway.toml")).read_text(), files=FILES)
    os.chmod(gw.paths.ca_key, 0o644)
    os.kill(gw.status()["processes"]["core"]["pid"], signal.SIGKILL)
    fix = f"chmod 600 {gw.paths.ca_key}"
    wait_until(lambda: fix in gw.paths.component_log("core").read_text(), 10, "the core to refuse")
    assert "event=refusing-to-start" in gw.paths.component_log("core").read_text()
    wait_until(lambda: gw.status()["processes"]["core"]["state"] != "RUNNING", 5, "the core to stay down")
    gw.stop()
    # and `millgate run` refuses before starting anything
    result = gw.cli("run", timeout=20)
    assert result.returncode == 1
    assert fix in result.stderr


FILES = {"functions/fn1/main.py": "def function_handler(event, context):\n    return None\n"}
