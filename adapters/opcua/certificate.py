"""The adapter's OPC-UA application instance certificate: loaded from the configured files, or made
once (RSA 2048, self-signed, the application URI and host name in its subjectAltName) under the state
dir, and described by its SHA-1 thumbprint, the figure OPC-UA servers show in their trust lists.

It writes only its own two files; trusting the certificate on the server is the operator's step.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.adapter_config import OpcuaAdapter
from gateway.atomic_file import write_atomic

VALID_DAYS = 3650  # an OPC-UA client certificate is trusted by hand on each server: do not make that yearly
BACKDATE = timedelta(minutes=5)
KEY_MODE = 0o600


class CertificateError(Exception):
    """A configured certificate or key that cannot be read, or a pair that cannot be created."""


@dataclass(frozen=True)
class ClientCertificate:
    cert_path: Path
    key_path: Path
    thumbprint: str  # SHA-1, as OPC-UA trust lists show it
    sha256: str
    created: bool  # made just now: the server does not trust it yet
    subject: str = ""
    not_before: datetime | None = None
    not_after: datetime | None = None
    pem: str = ""


def _fingerprints(cert: x509.Certificate) -> tuple[str, str]:
    return cert.fingerprint(hashes.SHA1()).hex(":").upper(), cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _load(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    return (
        x509.load_pem_x509_certificate(data)
        if data.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(data)
    )


def _create(cert_path: Path, key_path: Path, application_uri: str, common_name: str) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(key_path, key_pem, mode=KEY_MODE)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.DER))
    return cert


def ensure_client_certificate(
    cert_path: Path, key_path: Path, application_uri: str, common_name: str, generate: bool
) -> ClientCertificate:
    """The certificate at `cert_path` (made with its key first if missing and `generate`). Blocking file I/O."""
    created = False
    try:
        if not cert_path.exists() and generate:
            if key_path.exists():
                raise CertificateError(f"{key_path} exists without {cert_path}: restore the certificate or remove both")
            cert = _create(cert_path, key_path, application_uri, common_name)
            created = True
        else:
            cert = _load(cert_path)
            if not key_path.is_file():
                raise CertificateError(f"{key_path}: the private key of {cert_path} is missing")
    except OSError as exc:
        raise CertificateError(f"{exc.filename or cert_path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CertificateError(f"{cert_path}: not a DER or PEM certificate ({exc})") from None
    sha1, sha256 = _fingerprints(cert)
    if os.stat(key_path).st_mode & 0o077:
        raise CertificateError(f"{key_path}: the private key is readable by others; chmod 600 it")
    return ClientCertificate(
        cert_path,
        key_path,
        sha1,
        sha256,
        created,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def certificate_for_adapter(config: OpcuaAdapter, state_dir: Path, config_dir: Path) -> ClientCertificate:
    """An adapter's certificate: its configured pair (paths relative to the adapters dir), or the one
    kept under `<state>/opcua/<adapter>/`, made on first use. Blocking file I/O."""
    if config.certificate and config.private_key:
        cert, key, generate = config_dir / config.certificate, config_dir / config.private_key, False
    else:
        base = state_dir / "opcua" / config.name
        cert, key, generate = base / "client-cert.der", base / "client-key.pem", True
    uri = config.application_uri or f"urn:millgate:{config.name}"
    return ensure_client_certificate(cert, key, uri, f"millgate {config.name}", generate)
