"""Per-component broker credentials: one secret file per identity under the state dir, readable
only by the user that runs that component, and the mosquitto password file built from them.

Secrets are generated once and kept, so restarting a component never invalidates its login.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.atomic_file import write_atomic
from gateway.owned_dirs import is_regular_file

# mosquitto 2.x password hash: PBKDF2-SHA512, 101 iterations, 12-byte salt ("$7$" in mosquitto_passwd).
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def credential_path(credentials_dir: Path, identity: str) -> Path:
    return credentials_dir / f"{identity}.json"


def load_credentials(credentials_dir: Path, identity: str) -> Credentials:
    """Read an identity's secret; PermissionError tells the caller it is not theirs to use."""
    data = json.loads(credential_path(credentials_dir, identity).read_text())
    return Credentials(data["username"], data["password"])


def ensure_credentials(credentials_dir: Path, identity: str, owner: tuple[int, int] | None) -> Credentials:
    """The identity's credentials, created (mode 0600, owned by `owner`) if they do not exist yet, and
    created anew if they belong to another uid: what another user could read is no secret (an upgrade
    gives the uplink and adapters uids of their own; a function may change its run_as)."""
    path = credential_path(credentials_dir, identity)
    if is_regular_file(path):  # a link in its place is replaced, never followed
        creds = load_credentials(credentials_dir, identity)
        found = path.stat()
        if owner is None or found.st_uid == owner[0]:
            if owner is not None and found.st_gid != owner[1]:
                os.chown(path, *owner)
            return creds
    creds = Credentials(identity, secrets.token_urlsafe(24))
    write_atomic(path, json.dumps({"username": creds.username, "password": creds.password}), 0o600, owner)
    return creds


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, _PBKDF2_ITERATIONS)
    return f"$7${_PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_file_text(all_credentials: list[Credentials]) -> str:
    return "".join(f"{c.username}:{mosquitto_hash(c.password)}\n" for c in all_credentials)
