"""`millgate opcua cert ADAPTER [--pem]` through the real console script: the adapter's client
certificate is made on first use, kept afterwards, and printed with its subject, validity and the
thumbprints an operator compares on the server; unknown adapters and missing files are reported.
`millgate opcua trust list|accept|reject` shows and moves server certificates between the adapter's
trusted/ and rejected/ folders. `millgate opcua browse` prints the simulator's address space (a real
asyncua server in its own process) down to --depth."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.ca import self_signed
from tests.fixtures.gateway import run_cli

ADAPTER = """
name = "line2"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
{extra}
[[nodes]]
name = "temperature"
node_id = "ns=2;s=Line2.Temperature"
"""


def config_dir(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "config"
    (config / "adapters").mkdir(parents=True)
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    (config / "adapters" / "line2.toml").write_text(ADAPTER.format(extra=extra))
    return config


def fields(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith("-----") or "  " not in line:
            continue
        key, _, value = line.partition("  ")
        found[key.strip()] = value.strip()
    return found


def test_cert_makes_the_client_certificate_once_and_prints_its_thumbprints(tmp_path: Path) -> None:
    config, state = config_dir(tmp_path), tmp_path / "state"
    first = run_cli("opcua", "cert", "line2", "--pem", config=config, state=state)
    assert first.returncode == 0, first.stderr
    shown = fields(first.stdout)
    cert_path = state.absolute() / "opcua" / "line2" / "client-cert.der"
    assert shown["adapter"] == "line2  (created now)"
    assert shown["certificate"] == str(cert_path) and cert_path.is_file()
    assert (cert_path.parent / "client-key.pem").stat().st_mode & 0o077 == 0
    pem = first.stdout[first.stdout.index("-----BEGIN CERTIFICATE-----") :]
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert == x509.load_der_x509_certificate(cert_path.read_bytes())
    assert shown["SHA-1"] == cert.fingerprint(hashes.SHA1()).hex(":").upper()
    assert shown["SHA-256"] == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert shown["subject"] == "CN=millgate line2"
    assert shown["valid"] == (
        f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC to {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    )
    uri = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "urn:millgate:line2" in uri.get_values_for_type(x509.UniformResourceIdentifier)

    again = run_cli("opcua", "cert", "line2", config=config, state=state)
    assert again.returncode == 0, again.stderr
    assert fields(again.stdout)["adapter"] == "line2"
    assert fields(again.stdout)["SHA-1"] == shown["SHA-1"]
    assert "BEGIN CERTIFICATE" not in again.stdout


def test_cert_reports_an_unknown_adapter_and_a_missing_configured_certificate(tmp_path: Path) -> None:
    config, state = config_dir(tmp_path), tmp_path / "state"
    unknown = run_cli("opcua", "cert", "line9", config=config, state=state)
    assert unknown.returncode == 2
    assert "no OPC-UA adapter 'line9'" in unknown.stderr and "OPC-UA adapters: line2" in unknown.stderr

    configured = config_dir(tmp_path / "other", 'certificate = "pki/line2.der"\nprivate_key = "pki/line2.pem"\n')
    missing = run_cli("opcua", "cert", "line2", config=configured, state=state)
    assert missing.returncode == 1
    assert "line2.toml" in missing.stderr and "pki/line2.der" in missing.stderr
    assert not (configured / "adapters" / "pki").exists()


def test_trust_list_accept_and_reject_move_server_certificates(tmp_path: Path) -> None:
    config, state = config_dir(tmp_path), tmp_path / "state"
    before = run_cli("opcua", "trust", "list", config=config, state=state)
    assert before.returncode == 0, before.stderr
    assert "line2            -         no server certificate seen yet (trust = 'explicit')" in before.stdout

    server, _ = self_signed("plant server", 30)
    thumbprint = server.fingerprint(hashes.SHA1()).hex(":").upper()
    rejected = state / "opcua" / "line2" / "pki" / "rejected"
    rejected.mkdir(parents=True)
    (rejected / "seen.der").write_bytes(server.public_bytes(serialization.Encoding.DER))
    (rejected / "junk.der").write_bytes(b"not a certificate")

    listed = run_cli("opcua", "trust", "list", "line2", config=config, state=state)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ADAPTER", "STATE", "SHA-1"] and "SUBJECT" in header
    expires = f"{server.not_valid_after_utc:%Y-%m-%d %H:%M:%S}"
    assert f"line2            rejected  {thumbprint} {expires}  CN=plant server" in rows
    assert any("unreadable:" in row and "junk.der" in row for row in rows)

    accepted = run_cli("opcua", "trust", "accept", "line2", thumbprint.replace(":", ""), config=config, state=state)
    assert accepted.returncode == 0, accepted.stderr
    trusted_file = state.absolute() / "opcua" / "line2" / "pki" / "trusted" / (thumbprint.replace(":", "") + ".der")
    assert accepted.stdout.splitlines()[:2] == [
        f"accepted  line2  {thumbprint}  CN=plant server",
        f"file      {trusted_file}",
    ]
    assert trusted_file.is_file() and not (rejected / "seen.der").exists()
    listed = run_cli("opcua", "trust", "list", config=config, state=state)
    assert f"line2            trusted   {thumbprint} {expires}  CN=plant server" in listed.stdout

    again = run_cli("opcua", "trust", "accept", "line2", thumbprint, config=config, state=state)
    assert again.returncode == 1 and f"no certificate with SHA-1 {thumbprint}" in again.stderr

    refused = run_cli("opcua", "trust", "reject", "line2", thumbprint, config=config, state=state)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.startswith(f"rejected  line2  {thumbprint}")
    assert not trusted_file.exists() and (rejected / trusted_file.name).is_file()

    malformed = run_cli("opcua", "trust", "accept", "line2", "12:34", config=config, state=state)
    assert malformed.returncode == 2 and "'12:34' is not a SHA-1 thumbprint" in malformed.stderr
    unknown = run_cli("opcua", "trust", "list", "line9", config=config, state=state)
    assert unknown.returncode == 2 and "no OPC-UA adapter 'line9'" in unknown.stderr


def test_browse_prints_the_simulator_address_space_to_the_requested_depth(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "60")
    shallow = run_cli("opcua", "browse", sim.endpoint, "--depth", "1")
    assert shallow.returncode == 0, shallow.stderr
    lines = shallow.stdout.splitlines()
    assert lines[0] == f"{sim.endpoint} (Objects, depth 1)"
    assert "Line2  [Object]  node_id=ns=2;s=Line2  browse_path=2:Line2" in lines
    assert any(line.startswith("Server  [Object]  node_id=i=2253") for line in lines)
    assert not any(line.startswith("  ") for line in lines[1:])  # nothing below the first level
    assert "Temperature" not in shallow.stdout

    deep = run_cli("opcua", "browse", sim.endpoint, "--depth", "2")
    assert deep.returncode == 0, deep.stderr
    rows = {line.split()[0]: line for line in deep.stdout.splitlines()[1:] if line.startswith("  ") and "ns=2" in line}
    assert rows["Temperature"].startswith("  Temperature  [Variable]  node_id=ns=2;s=Line2.Temperature  type=Double")
    assert rows["Temperature"].endswith("browse_path=2:Line2/2:Temperature")
    assert "node_id=ns=2;s=Line2.Setpoint  type=Int16  value=100  browse_path=2:Line2/2:Setpoint" in rows["Setpoint"]
    assert "node_id=ns=2;s=Line2.Mode  type=String  value='auto'" in rows["Mode"]
    assert rows["SetCounter"].startswith("  SetCounter  [Method]  node_id=ns=2;s=Line2.SetCounter")

    sim.stop()
    gone = run_cli("opcua", "browse", sim.endpoint, "--timeout", "1")
    assert gone.returncode == 1 and sim.endpoint in gone.stderr and not gone.stdout
