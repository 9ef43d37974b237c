"""Per-component broker credentials: one secret file per identity under the state dir, readable
only by the user that runs that component, and the mosquitto password file built from them.

Secrets are generated once and kept, so restarting a component never invalidates its login; the
password file's bytes change only when a login does, so comparing them tells when the broker must reload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.atomic_file import write_atomic
from gateway.owned_dirs import is_regular_file

log = logging.getLogger(__name__)
# mosquitto 2.x password hash: PBKDF2-SHA512, 101 iterations, 12-byte salt ("$7$" in mosquitto_passwd).
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_MAX_SECRET_BYTES = 4096  # a secret file is ~80 bytes; its owner may have filled it with anything


class CredentialsInvalid(ValueError):
    """A secret file that is not what ensure_credentials wrote; the message names the file."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def credential_path(credentials_dir: Path, identity: str) -> Path:
    return credentials_dir / f"{identity}.json"


def load_credentials(credentials_dir: Path, identity: str) -> Credentials:
    """Read an identity's secret; PermissionError tells the caller it is not theirs to use,
    CredentialsInvalid that its content is damaged (the next `millgate run` or deploy writes a new one)."""
    path = credential_path(credentials_dir, identity)
    with path.open("rb") as handle:
        raw = handle.read(_MAX_SECRET_BYTES + 1)
    try:
        data = json.loads(raw) if len(raw) <= _MAX_SECRET_BYTES else None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested beyond the parser
        data = None
    if not isinstance(data, dict):
        raise CredentialsInvalid(f"{path}: not a secret file (a JSON object with username and password)")
    username, password = data.get("username"), data.get("password")
    # the username goes into mosquitto's password file as it is: only the identity's own name will do
    if username != identity or not isinstance(password, str) or not password:
        raise CredentialsInvalid(f"{path}: not a secret file for {identity} (wrong username or no password)")
    return Credentials(username, password)


def ensure_credentials(credentials_dir: Path, identity: str, owner: tuple[int, int] | None) -> Credentials:
    """The identity's credentials, created (mode 0600, owned by `owner`) if they do not exist yet, and
    created anew if they belong to another uid: what another user could read is no secret (an upgrade
    gives the uplink and adapters uids of their own; a function may change its run_as)."""
    path = credential_path(credentials_dir, identity)
    if is_regular_file(path):  # a link in its place is replaced, never followed
        found = path.stat()
        try:
            creds = load_credentials(credentials_dir, identity)
        except CredentialsInvalid as exc:  # its owner may write anything into it: it only locks itself out
            log.warning("event=credentials-regenerated identity=%s reason=%s", identity, exc)
        else:
            if owner is None or found.st_uid == owner[0]:
                if owner is not None and found.st_gid != owner[1]:
                    os.chown(path, *owner)
                return creds
    creds = Credentials(identity, secrets.token_urlsafe(24))
    write_atomic(path, json.dumps({"username": creds.username, "password": creds.password}), 0o600, owner)
    return creds


def login_fingerprint(creds: Credentials) -> str:
    """Tells one secret from another without revealing it (a program's restart fingerprint)."""
    return hashlib.sha256(f"{creds.username}:{creds.password}".encode()).hexdigest()[:16]


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, _PBKDF2_ITERATIONS)
    return f"$7${_PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _hash_matches(line_hash: str, password: str) -> bool:
    try:
        _, scheme, iterations, salt, _digest = line_hash.split("$")
        if scheme != "7" or int(iterations) != _PBKDF2_ITERATIONS:
            return False
        return secrets.compare_digest(mosquitto_hash(password, base64.b64decode(salt, validate=True)), line_hash)
    except ValueError:  # a line this module did not write
        return False


def password_file_text(all_credentials: list[Credentials], previous: str = "") -> str:
    """mosquitto's password file for `all_credentials`. A user whose hash in `previous` (the file as
    it is) still matches keeps it, salt and all, so the file changes exactly when a login changes."""
    kept = {user: hashed for user, _, hashed in (line.partition(":") for line in previous.splitlines())}
    lines = []
    for c in all_credentials:
        old = kept.get(c.username)
        hashed = old if old is not None and _hash_matches(old, c.password) else mosquitto_hash(c.password)
        lines.append(f"{c.username}:{hashed}\n")
    return "".join(lines)
