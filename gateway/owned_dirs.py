"""Directories root prepares for others, without following links: a component (or mosquitto) that can
write where one of them lies could otherwise leave a symlink there and have root chmod or chown
whatever it points to.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


class NotADirectory(OSError):
    """The path is a symbolic link or not a directory; nothing was changed through it."""


def make_owned_dir(path: Path, mode: int, owner: tuple[int, int] | None, whole_tree: bool = False) -> None:
    """`path` as a directory with `mode` and (when given) `owner`; with `whole_tree`, everything under
    it belongs to `owner` too. Refuses a link in its place; never follows one below it."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise NotADirectory(exc.errno, f"{path}: a symbolic link or not a directory; move it aside", str(path)) from exc
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    if whole_tree and owner is not None:
        _chown_below(path, owner)


def chown_tree(root: Path, owner: tuple[int, int]) -> None:
    """`root` and everything under it to `owner`, links themselves, never what they point to."""
    os.chown(root, *owner, follow_symlinks=False)
    _chown_below(root, owner)


def _chown_below(root: Path, owner: tuple[int, int]) -> None:
    """What is under `root` to `owner`, touching only what is someone else's; links themselves, never
    what they point to (os.walk does not descend into them)."""
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if (info.st_uid, info.st_gid) != owner:
                os.chown(path, *owner, follow_symlinks=False)


def is_regular_file(path: Path) -> bool:
    """True for a regular file itself, False for a link (to anything) or anything else."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def remove_tree(path: Path) -> None:
    """Remove a file, a link (itself) or a tree. Root removes whatever the modes say, so it changes
    none on the way (a path-based chmod could follow a link swapped in meanwhile); any other user first
    makes the read-only directories of its own deployments writable."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    if os.geteuid() != 0:
        for directory, _, _ in os.walk(path):
            os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
