"""Where a resource may point on the host: a device lies under /dev; a volume, or a model used in place,
lies outside the kernel's and the system's trees; and none is, holds or lies in the gateway's own
config, state or log dir (its CA key, device credentials, other functions' code); and where a volume may
be mounted for a function. It only decides.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from pathlib import Path

from gateway.config import Resource
from gateway.paths import SYSTEM_CONFIG, SYSTEM_LOGS, SYSTEM_STATE

DEVICE_ROOT = "/dev"
REFUSED_VOLUME_ROOTS = ("/sys", "/proc", "/dev", "/var")
REFUSED_DESTINATION_ROOTS = ("/sys", "/proc", "/dev")  # the kernel's trees, which a bind would hide
# a production gateway's dirs, protected whatever a given config or command line says
SYSTEM_DIRS: dict[str, Path] = {"config dir": SYSTEM_CONFIG, "state dir": SYSTEM_STATE, "log dir": SYSTEM_LOGS}


def normal(path: str) -> str:
    """An absolute path read lexically: '//proc', '/tmp/../proc' and '/proc/' are '/proc'."""
    return "/" + posixpath.normpath(path).lstrip("/")


def under(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it (both absolute, compared lexically)."""
    path, root = normal(path), normal(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _forms(path: str) -> set[str]:
    """The path as written and as the kernel resolves it (links followed): a grant follows links too."""
    return {normal(path), normal(os.path.realpath(path))}


def host_path(resource: Resource) -> bool:
    """Whether `path` is on the host; a deployed model's `path` is only where the function finds it."""
    return resource.kind != "model" or resource.source is None


def protected_dirs(config_dir: Path | None, state_dir: Path | None, log_dir: Path | None) -> dict[str, Path]:
    """The gateway's own dirs by what they are: the given ones and the system defaults."""
    dirs = dict(SYSTEM_DIRS)
    for label, given in (("config dir", config_dir), ("state dir", state_dir), ("log dir", log_dir)):
        if given is not None:
            dirs[f"gateway {label}"] = given.absolute()
    return dirs


def refusal(resource: Resource, protected: Mapping[str, Path]) -> str | None:
    """Why the host may not lend `resource.path` to a function; None when it may."""
    if not resource.path.startswith("/"):
        return f"{resource.path!r} must be an absolute path"
    if not host_path(resource):
        return None
    return host_path_refusal(resource.kind, resource.path, protected)


def destination_refusal(resource: Resource, protected: Mapping[str, Path]) -> str | None:
    """Why a volume may not be mounted at its `destination` in a function's namespace; None when it may
    (or it has none). Mounted over the gateway's own dirs, or one holding them, it would hide them from
    the function's runtime, or be written into them through the mount point the host keeps."""
    return None if resource.destination is None else destination_path_refusal(resource.destination, protected)


def destination_path_refusal(destination: str, protected: Mapping[str, Path]) -> str | None:
    """Why a volume may not be mounted at `destination`; None when it may."""
    if not destination.startswith("/"):
        return f"{destination!r} must be an absolute path"
    forms = _forms(destination)
    if any(under(f, root) for f in forms for root in REFUSED_DESTINATION_ROOTS):
        return f"{destination!r}: destinations under {', '.join(REFUSED_DESTINATION_ROOTS)} are refused"
    return _protected_refusal(destination, forms, protected)


def shared_destinations(granted: list[str], resources: Mapping[str, Resource]) -> list[tuple[int, str]]:
    """(index in `granted`, why) for each of one function's volumes mounted where an earlier one is."""
    seen: dict[str, str] = {}
    shared = []
    for index, name in enumerate(granted):
        destination = resources[name].destination if name in resources else None
        if destination is None:
            continue
        if normal(destination) in seen:
            first = seen[normal(destination)]
            shared.append((index, f"{name!r} has destination {destination!r}, as {first!r} does"))
        else:
            seen[normal(destination)] = name
    return shared


def host_path_refusal(kind: str, path: str, protected: Mapping[str, Path]) -> str | None:
    """Why absolute host `path` may not be a `kind` resource (device, volume, model used in place)."""
    forms = _forms(path)
    if kind == "device":
        outside = sorted(f for f in forms if not f.startswith(DEVICE_ROOT + "/"))
        if outside:
            shown = "" if outside == [normal(path)] else f" (it resolves to {outside[0]})"
            return f"{path!r}: a device must be a file under {DEVICE_ROOT}/{shown}"
    elif any(under(f, root) for f in forms for root in REFUSED_VOLUME_ROOTS):
        return f"{path!r}: {kind}s under {', '.join(REFUSED_VOLUME_ROOTS)} are refused"
    return _protected_refusal(path, forms, protected)


def _protected_refusal(path: str, forms: set[str], protected: Mapping[str, Path]) -> str | None:
    for label, directory in protected.items():
        for mine in sorted(_forms(str(directory))):
            for form in sorted(forms):
                if under(form, mine):
                    return f"{path!r} lies in the {label} {mine}: functions never get the gateway's own files"
                if under(mine, form):
                    return f"{path!r} holds the {label} {mine}: functions never get the gateway's own files"
    return None
