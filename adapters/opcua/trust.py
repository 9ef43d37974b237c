"""The adapter's trust list of OPC-UA server certificates, beside its client certificate:
`<state>/opcua/<adapter>/pki/trusted/` and `pki/rejected/`. A server is trusted when a certificate with
the same SHA-1 thumbprint is in trusted/ (any file name, DER or PEM); an unknown one is saved in
rejected/ as `<thumbprint>.der` for an operator to accept (`millgate opcua trust accept`).

It decides trust and moves files; it never talks to a server. Blocking file I/O: call it from a thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.atomic_file import write_atomic

DIR_MODE = 0o700


class TrustError(Exception):
    """A thumbprint that names no certificate, or a trust list that cannot be read or written."""


class Verdict(StrEnum):
    TRUSTED = "trusted"
    TRUSTED_FIRST_USE = "trusted-first-use"  # trust = "first-use", and this is the first server seen
    REJECTED = "rejected"


@dataclass(frozen=True)
class ServerCertificate:
    path: Path
    thumbprint: str  # SHA-1, colon-separated upper-case hex, as OPC-UA trust lists show it
    subject: str
    not_after: datetime


def pki_dir(state_dir: Path, adapter: str) -> Path:
    """Where an adapter's trust list lives: beside the client certificate made under the state dir."""
    return state_dir / "opcua" / adapter / "pki"


def thumbprint_of(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex(":").upper()


def normalise_thumbprint(text: str) -> str:
    """'3a:f0…' or '3AF0…' -> '3A:F0:…'; a ValueError naming the text if it is not 40 hex digits."""
    digits = re.sub(r"[\s:]", "", text).upper()
    if not re.fullmatch(r"[0-9A-F]{40}", digits):
        raise ValueError(f"{text!r} is not a SHA-1 thumbprint (40 hex digits, colons optional)")
    return ":".join(digits[i : i + 2] for i in range(0, 40, 2))


def load_certificate(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _describe(path: Path, cert: x509.Certificate) -> ServerCertificate:
    return ServerCertificate(path, thumbprint_of(cert), cert.subject.rfc4514_string(), cert.not_valid_after_utc)


class TrustStore:
    def __init__(self, pki: Path):
        self.pki = pki
        self.trusted_dir = pki / "trusted"
        self.rejected_dir = pki / "rejected"

    def _ensure_dirs(self) -> None:
        for path in (self.pki, self.trusted_dir, self.rejected_dir):
            path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)

    def scan(self, directory: Path) -> tuple[list[ServerCertificate], list[str]]:
        """The certificates in one folder, and a problem line per file that is not one."""
        found: list[ServerCertificate] = []
        problems: list[str] = []
        if not directory.is_dir():
            return found, problems
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            try:
                found.append(_describe(path, load_certificate(path.read_bytes())))
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
            except ValueError as exc:
                problems.append(f"{path}: not a DER or PEM certificate ({exc})")
        return found, problems

    def trusted(self) -> list[ServerCertificate]:
        return self.scan(self.trusted_dir)[0]

    def rejected(self) -> list[ServerCertificate]:
        return self.scan(self.rejected_dir)[0]

    def check(self, der: bytes, first_use: bool) -> tuple[Verdict, ServerCertificate]:
        """Is the server certificate `der` trusted? With `first_use`, the first server certificate this
        adapter ever sees (both folders empty) is trusted and stored; any other unknown one is saved in
        rejected/ (once) and refused."""
        cert = x509.load_der_x509_certificate(der)
        thumbprint = thumbprint_of(cert)
        name = thumbprint.replace(":", "") + ".der"
        try:
            self._ensure_dirs()
            trusted = self.trusted()
            for known in trusted:
                if known.thumbprint == thumbprint:
                    return Verdict.TRUSTED, known
            rejected = self.rejected()
            if first_use and not trusted and not rejected:
                path = self.trusted_dir / name
                write_atomic(path, der)
                return Verdict.TRUSTED_FIRST_USE, _describe(path, cert)
            for known in rejected:
                if known.thumbprint == thumbprint:
                    return Verdict.REJECTED, known
            path = self.rejected_dir / name
            write_atomic(path, der)
        except OSError as exc:
            raise TrustError(f"{exc.filename or self.pki}: {exc.strerror or exc}") from None
        return Verdict.REJECTED, _describe(path, cert)

    def _find(self, certificates: list[ServerCertificate], thumbprint: str) -> ServerCertificate | None:
        return next((c for c in certificates if c.thumbprint == thumbprint), None)

    def _move(self, thumbprint: str, source: Path, target: Path, verb: str) -> ServerCertificate:
        wanted = normalise_thumbprint(thumbprint)
        found, _ = self.scan(source)
        cert = self._find(found, wanted)
        if cert is None:
            listed = ", ".join(c.thumbprint for c in found) or "none"
            raise TrustError(f"no certificate with SHA-1 {wanted} in {source} to {verb} (there: {listed})")
        try:
            self._ensure_dirs()
            already = self._find(self.scan(target)[0], wanted)
            if already is not None:
                cert.path.unlink()
                return already
            moved = target / (wanted.replace(":", "") + cert.path.suffix)
            os.replace(cert.path, moved)
        except OSError as exc:
            raise TrustError(f"{exc.filename or source}: {exc.strerror or exc}") from None
        return ServerCertificate(moved, cert.thumbprint, cert.subject, cert.not_after)

    def accept(self, thumbprint: str) -> ServerCertificate:
        """Move a rejected server certificate to trusted/ (ValueError for a malformed thumbprint)."""
        return self._move(thumbprint, self.rejected_dir, self.trusted_dir, "accept")

    def reject(self, thumbprint: str) -> ServerCertificate:
        """Move a trusted server certificate to rejected/ (ValueError for a malformed thumbprint)."""
        return self._move(thumbprint, self.trusted_dir, self.rejected_dir, "reject")
