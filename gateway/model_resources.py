"""Model resources: each `model` resource a function is granted is unpacked read-only (a file, a
directory, a .zip or a .tar.gz, local or fetched from S3 by the short-lived gateway.model_fetch) into
that function's own resource directory under the state dir, and named in its worker environment.
It never imports boto3 and never changes a deployed model version in place.

<state>/resources/<function>/            0500, the function's uid
    .versions/<resource>-<digest>/       the unpacked model, 0550 dirs and 0440 files like the code
    <resource> -> .versions/...          $MILLGATE_RESOURCE_<RESOURCE> (a model without `source`: its path)
    gg/<path> -> ...                     $AWS_GG_RESOURCE_PREFIX: every granted resource at prefix + path
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

from gateway.config import Function, Resource
from gateway.function_deploy import HOME_MODE, code_version, lock_down, unpack_code
from gateway.model_fetch import NOT_MODIFIED
from gateway.owned_dirs import make_owned_dir, remove_tree

log = logging.getLogger(__name__)

RESOURCES_DIR = "resources"
VERSIONS = ".versions"
GG_TREE = "gg"
KEEP_VERSIONS = 2
ENV_PREFIX = "MILLGATE_RESOURCE_"


class ModelError(RuntimeError):
    """A model resource cannot be deployed; the message names the resource and what to do."""


def resources_home(state_dir: Path, function: str) -> Path:
    return state_dir / RESOURCES_DIR / function


def env_name(resource: str) -> str:
    """'anomaly-model' -> 'MILLGATE_RESOURCE_ANOMALY_MODEL'."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", resource).upper()


def model_environment(state_dir: Path, function: Function) -> dict[str, str]:
    """What a worker needs to find its deployed models (nothing when it has none)."""
    home = resources_home(state_dir, function.name)
    env = {env_name(g.name): str(home / g.name) for g in function.resources if os.path.islink(home / g.name)}
    if env and (home / GG_TREE).is_dir():
        env["AWS_GG_RESOURCE_PREFIX"] = str(home / GG_TREE)
    return env


def deploy_models(
    function: Function,
    resources: Mapping[str, Resource],
    state_dir: Path,
    config_dir: Path,
    owner: tuple[int, int] | None,
) -> list[str]:
    """Deploy the function's model resources; returns the problems (the function must not run)."""
    grants = [(g, resources[g.name]) for g in function.resources if g.name in resources]
    models = [(g, r) for g, r in grants if r.kind == "model" and r.source is not None]
    in_place = [r for _, r in grants if r.kind == "model" and r.source is None]  # granted like a volume
    home = resources_home(state_dir, function.name)
    if not models and not in_place:
        remove_tree(home)
        return []
    root = state_dir / RESOURCES_DIR
    root.mkdir(mode=0o711, exist_ok=True)
    os.chmod(root, 0o711)
    # root's, as the function's code home is (gateway/function_deploy.py): only the versions and their
    # files are the function's, so it cannot swap in a link for root to follow here
    make_owned_dir(home, 0o700, (0, 0) if owner is not None else None)
    make_owned_dir(home / VERSIONS, 0o700, (0, 0) if owner is not None else None)
    problems: list[str] = []
    current: dict[str, Path] = {}
    seen_env: dict[str, str] = {}
    try:
        for grant, resource in models:
            clash = seen_env.setdefault(env_name(resource.name), resource.name)
            if clash != resource.name:
                problems.append(f"resource {resource.name!r}: same variable {env_name(clash)} as {clash!r}; rename one")
                continue
            if grant.access != "ro":
                problems.append(f'resource {resource.name!r}: model resources are read-only; grant access = "ro"')
                continue
            try:
                version = _deploy_one(resource, home / VERSIONS, config_dir, owner)
            except (ModelError, OSError) as exc:
                problems.append(f"resource {resource.name!r}: {exc}")
                continue
            _swap_link(home / resource.name, Path(VERSIONS) / version.name)
            current[resource.name] = version
        for resource in in_place:
            _swap_link(home / resource.name, Path(resource.path))
        for entry in home.iterdir():
            if entry.name not in (VERSIONS, GG_TREE, *current, *(r.name for r in in_place)):
                remove_tree(entry)
        _prune(home / VERSIONS, {v.name for v in current.values()})
        unpacked = [r for _, r in models if r.name in current]
        problems += _build_gg_tree(home, [r for _, r in grants if r.source is None] + unpacked, owner)
    finally:
        for directory in (home / VERSIONS, home):
            os.chmod(directory, HOME_MODE if owner else 0o700)
    for problem in problems:
        log.error("function=%s event=model-unavailable problem=%r", function.name, problem)
    return problems


def _deploy_one(resource: Resource, versions: Path, config_dir: Path, owner: tuple[int, int] | None) -> Path:
    """The version directory now holding the resource's model (unpacked and locked down)."""
    assert resource.source is not None, "the config model requires a source for models"
    staging = Path(tempfile.mkdtemp(dir=versions, prefix=".deploy-"))
    try:
        if resource.source.startswith("s3://"):
            fetched = _fetch(resource, versions, staging)
            if fetched is None:  # unchanged in S3 since the deployed version
                return _deployed(versions, resource.name)
            source = fetched
        else:
            source = Path(resource.source)
            source = source if source.is_absolute() else config_dir / source
            if not source.exists():
                raise ModelError(f"source {resource.source!r} does not exist (looked at {source})")
        target = versions / f"{resource.name}-{code_version(source)}"
        if not target.exists():
            unpack_model(source, staging / "model")
            lock_down(staging / "model", owner)
            os.replace(staging / "model", target)
        os.utime(target)  # the newest deployed version survives pruning
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _deployed(versions: Path, name: str) -> Path:
    link = versions.parent / name
    if not os.path.islink(link):
        raise ModelError("no deployed version to keep")
    return versions.parent / os.readlink(link)


def _fetch(resource: Resource, versions: Path, staging: Path) -> Path | None:
    """Download the S3 object into `staging`; None when it did not change since the last download.
    Offline with a deployed version, that version stays (a factory keeps running without S3)."""
    assert resource.source is not None
    file = staging / (Path(resource.source.rstrip("/")).name or "model")
    record = versions / f".{resource.name}.s3.json"
    known = _read_record(record)
    has_deployed = os.path.islink(versions.parent / resource.name)
    argv = [sys.executable, "-m", "gateway.model_fetch", "--uri", resource.source, "--file", str(file)]
    if has_deployed and known.get("uri") == resource.source and known.get("etag"):
        argv += ["--if-none-match", known["etag"]]
    if resource.region:
        argv += ["--region", resource.region]
    if resource.endpoint_url:
        argv += ["--endpoint-url", resource.endpoint_url]
    try:
        child = subprocess.run(argv, capture_output=True, text=True, timeout=resource.fetch_timeout_s)
        failure = None if child.returncode in (0, NOT_MODIFIED) else _last_line(child.stderr, child.returncode)
    except subprocess.TimeoutExpired:
        failure = f"{resource.source}: no answer within fetch_timeout_s={resource.fetch_timeout_s}"
    if failure is not None:
        if has_deployed:
            log.warning("resource=%s event=model-fetch-failed keeping=deployed reason=%r", resource.name, failure)
            return None
        raise ModelError(f"cannot fetch: {failure}")
    if child.returncode == NOT_MODIFIED:
        return None
    record.write_text(json.dumps({"uri": resource.source, "etag": child.stdout.strip()}))
    return file


def _read_record(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _last_line(stderr: str, code: int) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"model_fetch exited {code}"


def unpack_model(source: Path, target: Path) -> None:
    """A directory or an archive (.zip, .tar.gz, .tgz, .tar) unpacked; any other file copied as is.
    The file name decides, not its content: a PyTorch .pt file is a zip that must stay whole."""
    name = source.name.lower()
    if source.is_dir() or name.endswith(".zip"):
        unpack_code(source, target)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        target.mkdir()
        try:
            with tarfile.open(source) as archive:
                _untar(archive, target, source.name)
        except (tarfile.TarError, OSError) as exc:
            raise ModelError(f"{source.name}: cannot unpack: {exc}") from exc
    else:
        target.mkdir()
        shutil.copyfile(source, target / source.name)


def _untar(archive: tarfile.TarFile, target: Path, shown: str) -> None:
    """Regular files and directories only, each inside `target` (Python 3.11.2 has no extraction filters)."""
    for member in archive.getmembers():
        if not (member.isfile() or member.isdir()):
            raise ModelError(f"{shown}: member {member.name!r} is neither a file nor a directory")
        place = (target / member.name).resolve()
        if not place.is_relative_to(target.resolve()):
            raise ModelError(f"{shown}: member {member.name!r} would land outside the model's directory")
        if member.isdir():
            place.mkdir(parents=True, exist_ok=True)
            continue
        place.parent.mkdir(parents=True, exist_ok=True)
        source = archive.extractfile(member)
        assert source is not None, "a regular member has content"
        with source, open(place, "wb") as sink:
            shutil.copyfileobj(source, sink)


def _swap_link(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _build_gg_tree(home: Path, resources: list[Resource], owner: tuple[int, int] | None) -> list[str]:
    """prefix + path finds every granted resource: models in their version, devices and volumes on the host."""
    tree = home / GG_TREE
    remove_tree(tree)
    tree.mkdir(mode=0o700)
    problems = []
    for resource in resources:
        relative = Path(os.path.normpath(resource.path)).relative_to("/")
        place = tree / relative
        inside = [tree / parent for parent in relative.parents]
        if relative == Path(".") or os.path.lexists(place) or any(p.is_symlink() for p in inside):
            problems.append(f"resource {resource.name!r}: path {resource.path!r} collides with another resource")
            continue
        place.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if resource.source is not None:
            os.symlink(os.path.relpath(home / resource.name, place.parent), place)
        else:
            os.symlink(resource.path, place)
    for directory, _, _ in os.walk(tree):  # root's too: the function passes through, changes nothing
        os.chmod(directory, HOME_MODE if owner else 0o700)
    return problems


def _prune(versions: Path, keep: set[str]) -> None:
    """Keep the current versions and the newest other one per resource, for a quick roll back."""
    old = sorted(
        (p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    kept: dict[str, int] = {}
    for path in old:
        resource = path.name.rsplit("-", 1)[0]
        kept[resource] = kept.get(resource, 0) + 1
        if kept[resource] >= KEEP_VERSIONS or resource not in {k.rsplit("-", 1)[0] for k in keep}:
            remove_tree(path)
    for record in versions.glob(".*.s3.json"):
        if record.name.removeprefix(".").removesuffix(".s3.json") not in {k.rsplit("-", 1)[0] for k in keep}:
            record.unlink()
