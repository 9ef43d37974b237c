"""The certificate and key files a config names, judged as they are on this host, as the programs that
use them will load them: the uplink the [cloud] CA, certificate and key (PEM, with ssl), an OPC-UA adapter
its certificate, key and pinned server certificate (asyncua's PEM-or-DER by name). Only a strict load
runs these (gateway/config_loader.py): a workstation building a bundle has none of a gateway's files.
Nothing of a key's content is ever printed.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from pathlib import Path
from typing import Any

from gateway.config_problems import Problem

NAMED_FILE_MAX_BYTES = 1024 * 1024  # a CA bundle with every public root is some 200 KB


def config_path(value: str | Path, config_dir: Path) -> Path:
    """A path the config gives: a relative one is relative to the config dir, whatever a process's cwd."""
    path = Path(value)
    return path if path.is_absolute() else (config_dir / path).absolute()


def read_named_file(path: Path) -> bytes | str | None:
    """The bytes of a file the config names (a certificate, a key); else what is wrong with it, or None
    when it is there but this user may not read it: the component that uses it reads it under its own
    uid (the uplink's key is readable by the uplink alone), so only root can tell it is unreadable."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            return f"is a directory, not a file ({path})"
        if not stat.S_ISREG(info.st_mode):
            return f"is not a regular file ({path})"
        if info.st_size > NAMED_FILE_MAX_BYTES:
            return f"is {info.st_size} bytes, too big for a certificate or key ({path})"
        with path.open("rb") as file:
            return file.read(NAMED_FILE_MAX_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return f"does not exist (looked at {path})"
    except PermissionError as exc:
        return f"cannot be read as root: {exc.strerror} ({path})" if os.geteuid() == 0 else None
    except OSError as exc:
        return f"cannot be read: {exc.strerror} ({path})"


CLOUD_FILES = ("ca_file", "cert_file", "key_file")


def cloud_file_checks(raw: Any, config_dir: Path, shown: str) -> list[Problem]:
    """The [cloud] CA, certificate and key: there, PEM, the key unencrypted and the certificate's, loaded
    as the uplink loads them (gateway/uplink/cloud_link.tls_context). A key this user may not read is
    not judged (the uplink reads it under its own uid), nor anything about its content printed."""
    if not isinstance(raw, dict):
        return []
    problems: list[Problem] = []
    good: dict[str, Path] = {}
    for key in CLOUD_FILES:
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = config_path(value, config_dir)
        found = read_named_file(path)
        wrong = found if isinstance(found, str) else None
        if isinstance(found, bytes):
            wrong = _pem_refusal(key, found)
        if wrong is not None:
            problems.append(Problem(shown, f"cloud.{key}", f"{value!r} {wrong}"))
        elif found is not None:
            good[key] = path
    if "ca_file" in good:
        try:
            ssl.create_default_context(cafile=str(good["ca_file"]))
        except (ssl.SSLError, OSError) as exc:
            message = f"{raw['ca_file']!r}: OpenSSL cannot load it: {_reason(exc)}"
            problems.append(Problem(shown, "cloud.ca_file", message))
    if "cert_file" in good and "key_file" in good:
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_cert_chain(str(good["cert_file"]), str(good["key_file"]), password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
                message = f"{raw['key_file']!r} is not the key of cert_file {raw['cert_file']!r}"
                problems.append(Problem(shown, "cloud.key_file", message))
            else:
                message = f"{raw['cert_file']!r}: OpenSSL cannot load it with key_file: {_reason(exc)}"
                problems.append(Problem(shown, "cloud.cert_file", message))
    return problems


def _pem_refusal(key: str, data: bytes) -> str | None:
    """Why the uplink could not use `data` as its `key` file: it reads PEM only, and has no passphrase."""
    labels = {label.decode() for label in re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)}
    if key != "key_file":
        if not labels & {"CERTIFICATE", "TRUSTED CERTIFICATE"}:
            return "is not PEM: it has no '-----BEGIN CERTIFICATE-----' block (the uplink reads PEM only)"
        return None
    if "ENCRYPTED PRIVATE KEY" in labels or b"Proc-Type: 4,ENCRYPTED" in data:
        return "is an encrypted key: the uplink has no passphrase for it; store it unencrypted, readable by the uplink"
    if not any(label.endswith("PRIVATE KEY") for label in labels):
        return "is not a PEM private key: it has no '-----BEGIN ... PRIVATE KEY-----' block (the uplink reads PEM only)"
    return None


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


OPCUA_FILES = (("certificate", "certificate"), ("private_key", "private key"), ("server_certificate", "certificate"))
KEY_MODE_OTHERS = 0o077  # adapters/opcua/certificate.py refuses a key with any of these bits


def opcua_file_checks(raw: dict[str, Any], adapter_dir: Path, shown: str) -> list[Problem]:
    """The certificate, key and pinned server certificate an OPC-UA adapter names (relative to the
    adapter file's directory, as the adapter reads them), read as asyncua reads them at connect."""
    problems = []
    for key, kind in OPCUA_FILES:
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = adapter_dir / value
        found = read_named_file(path)
        wrong = found if isinstance(found, str) else None
        if isinstance(found, bytes):
            wrong = _asyncua_refusal(found, path, kind)
        if wrong is None and kind == "private key" and isinstance(found, bytes):
            mode = path.stat().st_mode & 0o777
            if mode & KEY_MODE_OTHERS:
                wrong = f"is readable by others (mode {mode:o}): the adapter refuses it; chmod 600 it"
        if wrong is not None:
            problems.append(Problem(shown, key, f"{value!r} {wrong}"))
    return problems


def _asyncua_refusal(data: bytes, path: Path, kind: str) -> str | None:
    """Why asyncua would not load `data` as a certificate or an unencrypted private key. It picks the
    format by the file's name (asyncua.crypto.uacrypto._is_pem_format): PEM for .pem, DER otherwise.
    Says nothing of a key's content but whether it loads."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    named_pem = path.suffix.lower() == ".pem"
    looks_pem = data.lstrip().startswith(b"-----BEGIN ")
    if named_pem != looks_pem:
        actual, rename = ("PEM", "a name ending in .pem") if looks_pem else ("not PEM (DER?)", "a name ending in .der")
        return f"is {actual}, but asyncua reads a .pem file as PEM and any other as DER: give it {rename}"
    encoding = "PEM" if named_pem else "DER"
    try:
        if kind != "private key":
            (x509.load_pem_x509_certificate if named_pem else x509.load_der_x509_certificate)(data)
        elif named_pem:
            serialization.load_pem_private_key(data, password=None)
        else:
            serialization.load_der_private_key(data, password=None)
    except TypeError:
        return "is an encrypted key: the adapter has no passphrase for it; store it unencrypted (mode 600)"
    except (ValueError, UnsupportedAlgorithm):
        return f"is not a {encoding} {'X.509 certificate' if kind != 'private key' else kind}"
    return None
