"""Which millgate release a .deb holds and which one this code is, and whether they are the same: what
OTA checks after a restart. It reads versions; it installs and compares nothing else.
"""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "millgate"
EPOCH = re.compile(r"^\d+:")


class PackageUnreadable(RuntimeError):
    """The file is not a Debian package whose version can be read; the message says why."""


def running_version() -> str | None:
    """The installed millgate distribution's version (what packaging/build-deb.sh made the .deb's
    Version), or None when it is not installed as a distribution."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def deb_version(deb: Path) -> str:
    """The Version field of a .deb's control file, read with dpkg-deb."""
    try:
        done = subprocess.run(["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackageUnreadable(f"{deb}: dpkg-deb: {exc}") from exc
    version = done.stdout.strip()
    if done.returncode != 0 or not version:
        lines = done.stderr.strip().splitlines()
        raise PackageUnreadable(f"{deb}: not a readable Debian package ({lines[-1] if lines else 'no Version'})")
    return version


def same_release(deb: str, running: str) -> bool:
    """True when a Debian version names the release `running` is. The epoch never matters; a Debian
    revision (`-2`) and a pre-release tilde (`1.4~rc1`) are dropped when the bare form does not match."""
    bare = EPOCH.sub("", deb)
    candidates = {bare, bare.replace("~", "")}
    if "-" in bare:
        upstream = bare.rsplit("-", 1)[0]
        candidates |= {upstream, upstream.replace("~", "")}
    return running in candidates
