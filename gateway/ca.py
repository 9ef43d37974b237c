"""The gateway's group certificate authority, the local trust anchor as Greengrass Core's group CA was:
creates and rotates the CA, issues the broker's server certificate and devices' client certificates
(from a generated key or the device's CSR), and signs the CRL the broker enforces.

It writes files under the state dir's ca/ and nothing else; it never signals the broker (callers do).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import device_registry
from gateway.atomic_file import write_atomic
from gateway.aws_names import THING_NAME_PATTERN
from gateway.config import RESERVED_IDENTITIES, GatewayConfig
from gateway.device_registry import DeviceCert
from gateway.ip_detector import interface_addresses
from gateway.owned_dirs import make_owned_dir
from gateway.paths import GatewayPaths
from gateway.service_user import SERVICE_USER, service_user

# A certificate starts a little in the past so a device whose clock lags by a few minutes accepts it.
BACKDATE = timedelta(minutes=5)
KEY_MODE = 0o600
CERT_MODE = 0o644
MIN_RSA_BITS = 2048
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class CaError(RuntimeError):
    """Base for everything the CA refuses; the message says what, where and what to do."""


class CaMissing(CaError):
    pass


class CaExists(CaError):
    pass


class CaKeyInsecure(CaError):
    pass


class CaKeyMismatch(CaError):
    """The CA's key and certificate are not a pair: nothing it signs would verify."""


class CsrInvalid(CaError):
    pass


class ThingNameInvalid(CaError):
    pass


PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class GroupCa:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedDevice:
    thing: str
    cert: x509.Certificate
    key_pem: bytes | None  # None when the device sent its own CSR and keeps its key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def file_owner() -> tuple[int, int] | None:
    """Who owns CA files: the service user when running as root, else whoever runs (a dev checkout)."""
    return service_user().owner if os.geteuid() == 0 else None


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed(common_name: str, days: int, *, ca: bool = False) -> tuple[x509.Certificate, PrivateKey]:
    """A throwaway self-signed certificate and its new key (a demo impostor, a test's foreign CA)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = now_utc()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    return builder.sign(key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_ca_dir(paths: GatewayPaths, owner: tuple[int, int] | None) -> None:
    make_owned_dir(paths.ca_dir, 0o700, owner)


# --- the CA itself -------------------------------------------------------------------------------


def _ca_certificate(key: PrivateKey, thing_name: str, days: int, now: datetime) -> x509.Certificate:
    serial = x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "millgate"),
            # the serial keeps every generation's name distinct, so nothing chains to a rotated-away CA
            x509.NameAttribute(NameOID.COMMON_NAME, f"{thing_name} group CA {serial:x}"[:64]),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def key_matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether `cert` certifies `key`'s public half (a certificate and key written as a pair)."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def load_ca(paths: GatewayPaths) -> GroupCa:
    """The group CA, refused unless its key and certificate are a pair (CaKeyMismatch says what to do)."""
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        if paths.ca_key.exists() or paths.ca_cert.exists():
            raise CaError(
                f"{exc.filename}: missing while its other half is there; restore both from a backup of "
                f"{paths.ca_dir}, or start a new CA with `millgate ca rotate` (every device then needs a new "
                "certificate: --reissue-devices DIR)"
            ) from exc
        raise CaMissing(f"{exc.filename}: no group CA yet; run `millgate ca init` (or start the gateway)") from exc
    except PermissionError as exc:
        raise CaError(f"{exc.filename}: permission denied; run as root or as the {SERVICE_USER} user") from exc
    except ValueError as exc:
        raise CaError(f"{paths.ca_dir}: the group CA files are damaged ({exc}); restore them or rotate") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{paths.ca_key}: not an EC key; restore the CA or run `millgate ca rotate`")
    if not key_matches(key, cert):
        raise CaKeyMismatch(
            f"{paths.ca_key} is not the key of {paths.ca_cert} (a `millgate ca rotate` stopped between writing "
            "the two?): nothing signed with it would verify, so it signs nothing. Restore both files from a "
            f"backup of {paths.ca_dir}, or finish with `millgate ca rotate --reissue-devices DIR` (every device "
            "then needs its re-issued certificate). No new CA is made by itself: it would cut off every device."
        )
    return GroupCa(cert, key)


def _write_ca(paths: GatewayPaths, ca: GroupCa, owner: tuple[int, int] | None) -> None:
    write_atomic(paths.ca_key, key_pem(ca.key), KEY_MODE, owner)
    write_atomic(paths.ca_cert, ca.pem, CERT_MODE, owner)


def init_ca(paths: GatewayPaths, config: GatewayConfig, owner: tuple[int, int] | None) -> GroupCa:
    """Create the group CA, the broker's certificate and an empty CRL; refuses if a CA exists."""
    if paths.ca_key.exists() or paths.ca_cert.exists():
        raise CaExists(f"{paths.ca_dir}: a group CA exists already; `millgate ca rotate` replaces it")
    return _new_generation(paths, config, owner)


@dataclass(frozen=True)
class EnsuredCa:
    ca: GroupCa
    reissued: tuple[str, ...]  # what ensure_ca wrote anew and why, e.g. "server certificate: missing"


def ensure_ca(paths: GatewayPaths, config: GatewayConfig, owner: tuple[int, int] | None) -> EnsuredCa:
    """The group CA, created on first start; the broker's certificate and the CRL brought up to date:
    re-issued when due, when the key beside the certificate is not its own (a write torn by a crash,
    which mosquitto refuses to start with) or when the CRL is another CA generation's. A CA whose own
    key and certificate are not a pair is refused (load_ca), never replaced."""
    if _first_start_torn(paths) or not (paths.ca_key.exists() or paths.ca_cert.exists()):
        _new_generation(paths, config, owner)
        return EnsuredCa(load_ca(paths), ("group CA: new", "server certificate: new", "CRL: new"))
    check_key_permissions(paths)
    ca = load_ca(paths)
    reissued = []
    reason = server_cert_renewal_reason(paths, ca, config, now_utc())
    if reason is not None:
        issue_server_cert(paths, ca, config, owner)
        reissued.append(f"server certificate: {reason}")
    reason = crl_problem(paths, ca)
    if reason is not None:
        write_crl(paths, ca, owner)
        reissued.append(f"CRL: {reason}")
    return EnsuredCa(ca, tuple(reissued))


def _first_start_torn(paths: GatewayPaths) -> bool:
    """The first CA's key written and then a crash: no certificate was ever made from it (none of its
    own, no server certificate, no device), so making the CA again loses nothing."""
    if not paths.ca_key.exists() or paths.ca_cert.exists() or paths.server_cert.exists():
        return False
    return not device_registry.load_records(paths.device_registry)


def rotate_ca(paths: GatewayPaths, config: GatewayConfig, owner: tuple[int, int] | None) -> GroupCa:
    """A new CA generation: new key, new server certificate, new CRL. Every device certificate the
    old CA signed stops working, because the broker trusts only the new CA."""
    return _new_generation(paths, config, owner)


def _new_generation(paths: GatewayPaths, config: GatewayConfig, owner: tuple[int, int] | None) -> GroupCa:
    ensure_ca_dir(paths, owner)
    key = _new_key()
    ca = GroupCa(_ca_certificate(key, config.gateway.thing_name, config.broker.ca_days, now_utc()), key)
    _write_ca(paths, ca, owner)
    issue_server_cert(paths, ca, config, owner)
    write_crl(paths, ca, owner)
    return ca


def check_key_permissions(paths: GatewayPaths) -> None:
    """Refuse a CA or server key that anyone but its owner can read, or that the wrong user owns."""
    user = service_user()
    for key in (paths.ca_key, paths.server_key):
        try:
            info = key.stat()
        except FileNotFoundError:
            continue
        if info.st_mode & 0o077:
            raise CaKeyInsecure(
                f"{key}: mode {info.st_mode & 0o777:04o} lets other users read the key; "
                f"fix with `chmod 600 {key}` (and rotate with `millgate ca rotate` if it may have leaked)"
            )
        if os.geteuid() == 0 and info.st_uid not in (user.uid, 0):
            raise CaKeyInsecure(
                f"{key}: owned by uid {info.st_uid}, not the service user {user.name}; "
                f"fix with `chown {user.name}: {key}`"
            )


# --- the broker's server certificate -------------------------------------------------------------


@dataclass(frozen=True)
class ServerNames:
    dns: tuple[str, ...]
    ips: tuple[str, ...]


def server_names(config: GatewayConfig, detected: list[str] | None = None) -> ServerNames:
    """Everything a device may dial: localhost and loopback, the host name, the configured names and
    discovery addresses, and every detected interface address."""
    wanted = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *config.broker.hostnames]
    wanted += [entry.rsplit(":", 1)[0] for entry in config.discovery.addresses]
    wanted += interface_addresses() if detected is None else detected
    dns: dict[str, None] = {}
    ips: dict[str, None] = {}
    for name in wanted:
        try:
            ips[str(ipaddress.ip_address(name))] = None
        except ValueError:
            dns[name.lower()] = None
    return ServerNames(tuple(dns), tuple(ips))


def _san(names: ServerNames) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    general += [x509.IPAddress(ipaddress.ip_address(a)) for a in names.ips]
    return x509.SubjectAlternativeName(general)


def _leaf(
    ca: GroupCa,
    subject_cn: str,
    public: object,
    not_before: datetime,
    not_after: datetime,
    usage: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )


def issue_server_cert(
    paths: GatewayPaths,
    ca: GroupCa,
    config: GatewayConfig,
    owner: tuple[int, int] | None,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """Write a fresh key and certificate for the broker's TLS listener (CN = the gateway's thing)."""
    now = now_utc()
    start = not_before or now - BACKDATE
    end = not_after or now + timedelta(days=config.broker.server_cert_days)
    key = _new_key()
    builder = _leaf(ca, config.gateway.thing_name, key.public_key(), start, end, ExtendedKeyUsageOID.SERVER_AUTH)
    cert = builder.add_extension(_san(server_names(config)), critical=False).sign(ca.key, hashes.SHA256())
    # key first: a broker reload between the two writes keeps the old pair, never an odd one out
    write_atomic(paths.server_key, key_pem(key), KEY_MODE, owner)
    write_atomic(paths.server_cert, _pem(cert), CERT_MODE, owner)
    return cert


def _server_key_problem(paths: GatewayPaths, cert: x509.Certificate) -> str | None:
    try:
        key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    except FileNotFoundError:
        return "its key is missing"
    except (ValueError, TypeError):
        return "its key is unreadable"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not key_matches(key, cert):
        return "its key is not the certificate's (a write torn by a crash?)"
    return None


def load_server_cert(paths: GatewayPaths) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def renewal_time(cert: x509.Certificate, renew_at: float) -> datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * renew_at


def server_cert_renewal_reason(
    paths: GatewayPaths, ca: GroupCa, config: GatewayConfig, now: datetime, detected: list[str] | None = None
) -> str | None:
    """Why the broker's certificate must be re-issued now, or None while it is good."""
    cert = load_server_cert(paths)
    if cert is None:
        return "missing"
    key_problem = _server_key_problem(paths, cert)
    if key_problem is not None:
        return key_problem
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return "signed by another CA generation"
    if now >= renewal_time(cert, config.broker.server_cert_renew_at):
        return f"past its renewal time (expires {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
    wanted = server_names(config, detected)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "has no subject alternative names"
    have = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    missing = sorted((set(wanted.dns) | set(wanted.ips)) - have)
    if missing:
        return f"lacks {', '.join(missing)}"
    return None


# --- device certificates -------------------------------------------------------------------------


def validate_thing_name(thing: str) -> None:
    if not re.fullmatch(THING_NAME_PATTERN, thing):
        raise ThingNameInvalid(f"{thing!r}: not a thing name (1-128 of A-Z a-z 0-9 : _ -, as AWS IoT allows)")
    if thing in RESERVED_IDENTITIES:
        raise ThingNameInvalid(f"{thing!r}: reserved for a gateway component; choose another thing name")


def parse_csr(data: bytes, source: str, thing: str) -> x509.CertificateSigningRequest:
    """A device's CSR, checked: parseable, self-consistent, a strong key, and for this thing."""
    try:
        csr = x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
    except ValueError:
        raise CsrInvalid(
            f"{source}: not a certificate signing request (PEM or DER); "
            f"create one with `openssl req -new -key device.key -subj /CN={thing} -out device.csr`"
        ) from None
    if not csr.is_signature_valid:
        raise CsrInvalid(f"{source}: the CSR's signature does not match its public key; create it again")
    public = csr.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            raise CsrInvalid(f"{source}: RSA key of {public.key_size} bits; at least {MIN_RSA_BITS} are required")
    elif isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ACCEPTED_CURVES):
            raise CsrInvalid(f"{source}: curve {public.curve.name} is not accepted; use P-256 or P-384")
    else:
        raise CsrInvalid(f"{source}: {type(public).__name__} keys are not accepted; use RSA >= 2048 or EC P-256")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names and names[0].value != thing:
        raise CsrInvalid(f"{source}: the CSR's CN is {names[0].value!r}, not the thing name {thing!r}")
    return csr


def issue_device_cert(
    ca: GroupCa,
    thing: str,
    days: int,
    csr: x509.CertificateSigningRequest | None = None,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> IssuedDevice:
    """A client certificate for `thing` (CN = thing name) from the device's CSR or a new key."""
    validate_thing_name(thing)
    now = now_utc()
    key = None if csr is not None else _new_key()
    public = csr.public_key() if csr is not None else key.public_key()  # type: ignore[union-attr]
    start = not_before or now - BACKDATE
    end = not_after or now + timedelta(days=days)
    cert = _leaf(ca, thing, public, start, end, ExtendedKeyUsageOID.CLIENT_AUTH).sign(ca.key, hashes.SHA256())
    return IssuedDevice(thing, cert, key_pem(key) if key is not None else None)


def record_device(paths: GatewayPaths, issued: IssuedDevice, ca: GroupCa, owner: tuple[int, int] | None) -> None:
    with device_registry.locked(paths.device_registry):
        records = device_registry.load_records(paths.device_registry)
        records.append(
            DeviceCert(
                issued.thing,
                issued.cert.serial_number,
                issued.cert.not_valid_before_utc,
                issued.cert.not_valid_after_utc,
                ca.serial,
                from_csr=issued.key_pem is None,
            )
        )
        device_registry.save_records(paths.device_registry, records, owner)


def write_device_files(issued: IssuedDevice, ca: GroupCa, out: Path) -> list[Path]:
    """`<thing>.cert.pem`, `<thing>.key.pem` (0600, when generated here) and `group-ca.pem` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{issued.thing}.cert.pem"]
    write_atomic(written[0], issued.cert_pem, CERT_MODE)
    if issued.key_pem is not None:
        written.append(out / f"{issued.thing}.key.pem")
        write_atomic(written[-1], issued.key_pem, KEY_MODE)
    written.append(out / "group-ca.pem")
    write_atomic(written[-1], ca.pem, CERT_MODE)
    return written


def revoke_device(paths: GatewayPaths, thing: str, owner: tuple[int, int] | None) -> int:
    """Revoke every current certificate of `thing` and re-sign the CRL; return how many."""
    ca = load_ca(paths)
    with device_registry.locked(paths.device_registry):
        records = device_registry.load_records(paths.device_registry)
        records, count = device_registry.revoke(records, thing, ca.serial, now_utc())
        if count:
            device_registry.save_records(paths.device_registry, records, owner)
            write_crl(paths, ca, owner, records)
    return count


def crl_problem(paths: GatewayPaths, ca: GroupCa) -> str | None:
    """Why the CRL on disk must be signed again, or None while it is this CA generation's."""
    try:
        crl = x509.load_pem_x509_crl(paths.crl_file.read_bytes())
    except FileNotFoundError:
        return "missing"
    except ValueError:
        return "unreadable"
    if crl.issuer != ca.cert.subject or not crl.is_signature_valid(ca.key.public_key()):
        return "signed by another CA generation"
    return None


def write_crl(
    paths: GatewayPaths, ca: GroupCa, owner: tuple[int, int] | None, records: list[DeviceCert] | None = None
) -> None:
    """Sign the CRL: every revoked certificate of this CA generation. It is valid as long as the CA,
    because the broker reads it from disk; it is never fetched, so it cannot go stale unseen."""
    if records is None:
        records = device_registry.load_records(paths.device_registry)
    now = now_utc()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(ca.cert.not_valid_after_utc)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    for record in records:
        if record.ca_serial == ca.serial and record.revoked_at is not None:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(record.serial).revocation_date(record.revoked_at).build()
            )
    crl = builder.sign(ca.key, hashes.SHA256())
    write_atomic(paths.crl_file, crl.public_bytes(serialization.Encoding.PEM), CERT_MODE, owner)
