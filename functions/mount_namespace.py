"""Volumes at their `destination`: a function process (an on-demand worker, a long-lived runner) gets a
private mount namespace, as Greengrass v1's containers did, with each such volume bind-mounted there
(read-only for `ro`). It runs as root before the privilege drop; it never changes the host's mounts.

`python -m functions.mount_namespace ... -- COMMAND` does it for a worker the core spawns: it enters the
namespace, drops to the function's uid/gid/groups and execs COMMAND, or writes why it could not to
--error-fd and exits.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from functions.privileges import drop_privileges

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
EXIT_REFUSED = 126


@dataclass(frozen=True)
class VolumeMount:
    resource: str
    source: str
    destination: str
    read_only: bool


class MountRefused(Exception):
    """The kernel refused the namespace or a mount: the function must not start."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _refused(function: str, resource: str, what: str, code: int) -> MountRefused:
    name = errno.errorcode.get(code, "?")
    return MountRefused(
        f"function {function!r}: resource {resource!r}: {what}: errno {code} ({name}): {os.strerror(code)}"
    )


def _mount(libc: ctypes.CDLL, source: str | None, target: str, flags: int) -> int:
    """0, or the errno of mount(2)."""
    encoded = source.encode() if source is not None else None
    if libc.mount(encoded, target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        return ctypes.get_errno()
    return 0


def enter_private_mounts(function: str, mounts: Sequence[VolumeMount]) -> None:
    """Give this process (single-threaded, or before the threads that need it start) its own mount
    namespace with `mounts` in place; raises MountRefused naming the function, resource and errno."""
    if not mounts:
        return
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        raise _refused(function, mounts[0].resource, "unshare(CLONE_NEWNS)", ctypes.get_errno())
    # without this, the binds below would propagate back to the host's namespace
    code = _mount(libc, None, "/", MS_REC | MS_PRIVATE)
    if code:
        raise _refused(function, mounts[0].resource, "making / private (MS_REC|MS_PRIVATE)", code)
    for mount in mounts:
        try:
            os.makedirs(mount.destination, mode=0o755, exist_ok=True)  # on the host: it is the mount point
        except OSError as exc:
            raise _refused(function, mount.resource, f"creating {mount.destination}", exc.errno or 0) from None
        code = _mount(libc, mount.source, mount.destination, MS_BIND | MS_REC)
        if code:
            raise _refused(function, mount.resource, f"bind-mounting {mount.source} at {mount.destination}", code)
        if mount.read_only:
            # a remount must keep the flags the kernel locks on the source's mount (nosuid, nodev, noexec)
            kept = os.statvfs(mount.destination).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
            code = _mount(libc, None, mount.destination, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)
            if code:
                raise _refused(function, mount.resource, f"remounting {mount.destination} read-only", code)


def wrap_command(
    function: str,
    uid: int,
    gid: int,
    groups: Sequence[int],
    mounts: Sequence[VolumeMount],
    error_fd: int,
    command: Sequence[str],
) -> list[str]:
    """`command` run through this module: namespace and mounts first, then the function's identity."""
    # -I: this runs as root in the function's code dir with the function's environment; neither the
    # cwd nor PYTHONPATH may decide which code root runs
    return [
        sys.executable,
        "-I",
        "-m",
        "functions.mount_namespace",
        "--function",
        function,
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--groups",
        ",".join(str(g) for g in groups),
        "--mounts",
        json.dumps([asdict(m) for m in mounts]),
        "--error-fd",
        str(error_fd),
        "--",
        *command,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millgate-mounts")
    parser.add_argument("--function", required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--groups", default="")
    parser.add_argument("--mounts", required=True)
    parser.add_argument("--error-fd", type=int, required=True)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    os.set_inheritable(args.error_fd, False)  # closed by the exec below: the spawner's read sees the end
    try:
        mounts = [VolumeMount(**m) for m in json.loads(args.mounts)]
        enter_private_mounts(args.function, mounts)
        drop_privileges(args.uid, args.gid, [int(g) for g in args.groups.split(",") if g])
        os.execv(args.command[0], args.command)
    except (MountRefused, OSError) as exc:
        os.write(args.error_fd, str(exc).encode())
    return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
