"""Why the broker would refuse a device certificate, in words: `millgate device check FILE`.

mosquitto 2.0.11 logs every refused client certificate as the same `certificate verify failed`
(OpenSSL's verify reason never reaches its log; the device sees it as a TLS alert). This makes the
same checks as the broker's TLS listener, in OpenSSL's order, against the current group CA and the
device registry, so an operator can tell an expired certificate from a revoked or foreign one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from gateway.device_registry import DeviceCert


@dataclass(frozen=True)
class Verdict:
    thing: str  # the certificate's CN: the identity it would connect as
    accepted: bool
    reason: str


def _stamp(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"


def _ago(then: datetime, now: datetime) -> str:
    days = (now - then).total_seconds() / 86400
    return f"{days:.1f} days ago" if days >= 1 else f"{(now - then).total_seconds() / 3600:.1f} hours ago"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def check_device_cert(
    cert: x509.Certificate, ca: x509.Certificate, records: list[DeviceCert], now: datetime
) -> Verdict:
    thing = _common_name(cert)
    record = next((r for r in records if r.serial == cert.serial_number), None)

    def refused(reason: str) -> Verdict:
        return Verdict(thing, False, reason)

    if not thing:
        return refused("no CN: the broker takes a device's identity from its certificate's CN")
    if cert.issuer == cert.subject and _issued_by(cert, cert):
        return refused("self-signed: not issued by the group CA (unknown ca)")
    if not _issued_by(cert, ca):
        if record is not None and record.ca_serial != ca.serial_number:
            return refused(
                f"issued by a group CA since rotated away (CA serial {record.ca_serial:x}); "
                f"issue a new one: millgate device add {thing}"
            )
        return refused(f"issued by another CA ({cert.issuer.rfc4514_string()}), not this gateway's (unknown ca)")
    if now < cert.not_valid_before_utc:
        return refused(f"not yet valid: valid from {_stamp(cert.not_valid_before_utc)}")
    if now >= cert.not_valid_after_utc:
        expired = cert.not_valid_after_utc
        return refused(f"expired on {_stamp(expired)} ({_ago(expired, now)}); millgate device add {thing}")
    if record is not None and record.revoked_at is not None:
        return refused(f"revoked on {_stamp(record.revoked_at)} (millgate device revoke; in the broker's CRL)")
    if record is None:
        return Verdict(thing, True, "signed by the group CA and valid, though not in this gateway's device registry")
    return Verdict(thing, True, f"valid until {_stamp(cert.not_valid_after_utc)}")
