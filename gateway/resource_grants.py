"""Gives each function exactly the resources it declares: POSIX ACL entries for its uid on devices
and volumes (read-only or read-write), or membership of the resource's group where the resource is
declared `group_owner`; its models unpacked for it alone (gateway.model_resources). A missing device
is a problem for that function alone.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Function, Resource
from gateway.model_resources import deploy_models
from gateway.resource_paths import destination_refusal, protected_dirs, refusal

log = logging.getLogger(__name__)


@dataclass
class FunctionAccess:
    extra_groups: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def setfacl(*args: str) -> str | None:
    binary = shutil.which("setfacl")
    if binary is None:
        return "setfacl is not installed (apt-get install acl)"
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    return f"setfacl {' '.join(args)}: {result.stderr.strip()}" if result.returncode != 0 else None


def _grant_path(path: Path, uid: int, access: str, volume: bool) -> str | None:
    # A named-user ACL entry wins over the file's group and other bits for that uid, so "ro" also
    # takes write away where the mode would allow it.
    entry = f"u:{uid}:{'rwX' if access == 'rw' else 'rX'}"
    if not volume:
        return setfacl("-m", entry, str(path))
    return setfacl("-R", "-m", entry, str(path)) or setfacl("-d", "-m", entry, str(path))


def _deployed_model(resource: Resource) -> bool:
    """A model with a `source` is unpacked for the function; one without is used where it lies."""
    return resource.kind == "model" and resource.source is not None


def grant_resources(
    function: Function,
    resources: dict[str, Resource],
    can_change_owners: bool,
    state_dir: Path | None = None,
    config_dir: Path | None = None,
    log_dir: Path | None = None,
) -> FunctionAccess:
    """Apply the function's grants; what could not be granted is in `problems` (the function must not run).
    Model resources are deployed under `state_dir`, their relative sources found in `config_dir`.
    A path the config check refused is refused again here, against the dirs this gateway really uses
    and with links resolved as they are now."""
    access = FunctionAccess()
    protected = protected_dirs(config_dir, state_dir, log_dir)
    for grant in function.resources:
        refused = refusal(resources[grant.name], protected) or destination_refusal(resources[grant.name], protected)
        if refused:
            access.problems.append(f"resource {grant.name!r}: {refused}")
    if access.problems:  # the function will not run: grant it nothing at all
        for refused_grant in access.problems:
            log.error("function=%s event=resource-refused problem=%r", function.name, refused_grant)
        return access
    models = [g for g in function.resources if _deployed_model(resources[g.name])]
    if models and (state_dir is None or config_dir is None):
        access.problems += [f"resource {g.name!r}: model resources need the state and config dirs" for g in models]
    elif state_dir is not None and config_dir is not None:
        owner = (function.uid, function.gid) if can_change_owners else None
        access.problems += deploy_models(function, resources, state_dir, config_dir, owner)
    for grant in function.resources:
        resource = resources[grant.name]
        if _deployed_model(resource):
            continue
        path = Path(resource.path)
        if not path.exists():
            access.problems.append(f"resource {resource.name!r}: {resource.kind} {path} does not exist")
            continue
        if resource.group_owner:
            access.extra_groups.append(path.stat().st_gid)
        if can_change_owners:
            failed = _grant_path(path, function.uid, grant.access, volume=resource.kind != "device")
            if failed:
                access.problems.append(f"resource {resource.name!r}: {failed}")
    for problem in access.problems:
        log.error("function=%s event=resource-unavailable problem=%r", function.name, problem)
    return access
