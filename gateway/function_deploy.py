"""Deploys function code: copies a function's directory or unpacks its zip into
<state>/functions/<name>/<version>/, where <version> is a hash of the code, readable by that
function's uid and no other function's. It never changes a deployed version in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.atomic_file import write_atomic
from gateway.deploy_store import config_files
from gateway.owned_dirs import make_owned_dir, remove_tree

if TYPE_CHECKING:
    from gateway.config import Function

KEEP_VERSIONS = 2
MANIFEST = "deployed.json"
# a function's home under root: others may pass through to the version they own, not list or change it
HOME_MODE = 0o711


class DeployError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeployedFunction:
    name: str
    version: str
    path: str
    extra_groups: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why this function must not run, if anything


def code_version(source: Path) -> str:
    digest = hashlib.sha256()
    if source.is_file():
        digest.update(source.read_bytes())
    else:
        for path in sorted(config_files(source)):  # links to directories followed, as the copy does
            digest.update(str(path.relative_to(source)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def unpack_code(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        return
    if not zipfile.is_zipfile(source):
        raise DeployError(f"{source}: neither a directory nor a zip file")
    with zipfile.ZipFile(source) as archive:
        for member in archive.namelist():
            resolved = (target / member).resolve()
            if not resolved.is_relative_to(target.resolve()):
                raise DeployError(f"{source}: member {member!r} would land outside the function's directory")
        archive.extractall(target)


def lock_down(root: Path, owner: tuple[int, int] | None) -> None:
    """Read-only for the function's uid, nothing for anyone else."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if owner is not None:
                os.chown(path, *owner)
            os.chmod(path, 0o440)
        if owner is not None:
            os.chown(directory, *owner)
        os.chmod(directory, 0o550)


def deploy_function(function: Function, source: Path, functions_dir: Path, as_root: bool) -> DeployedFunction:
    if not source.exists():
        raise DeployError(f"{source}: function {function.name!r} code does not exist")
    version = code_version(source)
    owner = (function.uid, function.gid) if as_root else None
    home = functions_dir / function.name
    target = home / version
    # the function's versions are its own (read-only); the directory holding them stays root's, so the
    # function cannot swap in a link for root to chown or chmod through at the next deployment
    make_owned_dir(home, HOME_MODE if as_root else 0o700, (0, 0) if as_root else None)
    if owner is not None and target.is_dir() and target.stat().st_uid != owner[0]:
        # the same code under a new run_as: made anew for the new owner; never chowned in place, where
        # the old owner could swap a directory for a link while root walks it
        remove_tree(target)
    if not target.exists():
        staging = Path(tempfile.mkdtemp(dir=home, prefix=".deploy-"))
        try:
            unpack_code(source, staging / "code")
            lock_down(staging / "code", owner)
            os.replace(staging / "code", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _prune(home, keep=version)
    return DeployedFunction(function.name, version, str(target))


def _prune(home: Path, keep: str) -> None:
    versions = sorted(
        (p for p in home.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in [v for v in versions if v.name != keep][KEEP_VERSIONS - 1 :]:
        remove_tree(old)


def write_manifest(functions_dir: Path, deployed: list[DeployedFunction]) -> None:
    write_atomic(functions_dir / MANIFEST, json.dumps({d.name: asdict(d) for d in deployed}, indent=2), 0o600)


def read_manifest(functions_dir: Path) -> dict[str, DeployedFunction]:
    data = json.loads((functions_dir / MANIFEST).read_text())
    return {name: DeployedFunction(**entry) for name, entry in data.items()}
