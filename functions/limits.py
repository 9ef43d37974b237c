"""Memory limits for a function process (an on-demand worker, a long-lived runner): a cgroup (v2 with the
memory controller enabled for millgate's subtree, or v1's memory controller) where this machine lets
millgate write one, otherwise RLIMIT_AS set by the process itself before user code loads. It logs which
one is in use when that changes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_DIR = "millgate"
MIB = 1024 * 1024
THREAD_STACK_BYTES = 1024 * 1024
# what a function process needs beyond the function's memory_mb for millgate's runtime in it (the
# interpreter, its MQTT and I/O threads, a long-lived runner's queue): given under either mechanism
RUNTIME_HEADROOM_MB = 64
REMOVE_WAIT_S = 2.0  # for what remove_cgroup killed to leave the group

_reported: list[str] = []  # the mechanism last logged, so a change is logged once
_refusal: list[str] = []  # why the last placement fell back to RLIMIT_AS
_swept: list[bool] = []


def cgroup_kind() -> str:
    """'v2', 'v1' or 'none': what `place_in_cgroup` would try here (it only looks)."""
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and os.access(CGROUP_ROOT, os.W_OK):
        with contextlib.suppress(OSError):
            if "memory" in controllers.read_text().split():
                return "v2"
    if (CGROUP_ROOT / "memory" / "cgroup.procs").exists() and os.access(CGROUP_ROOT / "memory", os.W_OK):
        return "v1"
    return "none"


def mechanism_description() -> tuple[str, str]:
    """(mechanism, why) for `millgate check`: 'cgroup v2', 'cgroup v1' or 'RLIMIT_AS'."""
    kind = cgroup_kind()
    if kind == "v2":
        enabled = _subtree_controllers(CGROUP_ROOT)
        how = "enabled" if "memory" in enabled else "available; enabled for millgate's subtree at the first worker"
        return "cgroup v2", f"memory controller {how} ({CGROUP_ROOT}/{GROUP_DIR}/<worker>/memory.max)"
    if kind == "v1":
        return "cgroup v1", f"memory controller writable ({CGROUP_ROOT}/memory/{GROUP_DIR}/<worker>)"
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        why = "cgroup v2 without a writable memory controller here (not root, or not delegated)"
    else:
        why = "no writable cgroup memory controller"
    return "RLIMIT_AS", why


def _subtree_controllers(directory: Path) -> set[str]:
    try:
        return set((directory / "cgroup.subtree_control").read_text().split())
    except OSError:
        return set()


def _enable_memory(directory: Path) -> None:
    """Let `directory`'s children have memory.max; raises OSError with the kernel's refusal."""
    if "memory" not in _subtree_controllers(directory):
        (directory / "cgroup.subtree_control").write_text("+memory")


def fallback_reason() -> str | None:
    """Why the last worker got RLIMIT_AS instead of a cgroup (the kernel's refusal); None if it did not."""
    return _refusal[0] if _refusal else None


def _report(mechanism: str, reason: str = "") -> None:
    _refusal[:] = [reason] if reason else []
    if _reported[-1:] != [mechanism]:
        _reported[:] = [mechanism]
        level = logging.INFO if mechanism.startswith("cgroup") else logging.WARNING
        log.log(level, "event=memory-limit mechanism=%s%s", mechanism, f" reason={reason!r}" if reason else "")


def _base(kind: str) -> Path:
    return CGROUP_ROOT / GROUP_DIR if kind == "v2" else CGROUP_ROOT / "memory" / GROUP_DIR


def _sweep(base: Path) -> None:
    """Groups of workers that are gone (a core killed before it could clean up): <function>-<pid>."""
    if _swept:
        return
    _swept.append(True)
    for group in base.iterdir() if base.is_dir() else ():
        pid = group.name.rpartition("-")[2]
        if group.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                group.rmdir()


def cgroup_limit_bytes(memory_mb: int) -> int:
    """A function process's cgroup memory cap: its budget plus the runtime's headroom, as RLIMIT_AS gives."""
    return (memory_mb + RUNTIME_HEADROOM_MB) * MIB


def place_in_cgroup(group: str, pid: int, memory_mb: int) -> str | None:
    """Put `pid` in cgroup millgate/<group> with a memory cap (cgroup_limit_bytes); the kind used, or
    None (RLIMIT_AS then)."""
    kind = cgroup_kind()
    if kind == "none":
        _report("RLIMIT_AS", mechanism_description()[1])
        return None
    base = _base(kind)
    path = base / group
    try:
        if kind == "v2":
            _enable_memory(CGROUP_ROOT)
            base.mkdir(exist_ok=True)
            _enable_memory(base)
        else:
            base.mkdir(exist_ok=True)
        _sweep(base)
        path.mkdir(exist_ok=True)
        if kind == "v2":
            (path / "memory.max").write_text(str(cgroup_limit_bytes(memory_mb)))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: nothing to turn off
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(cgroup_limit_bytes(memory_mb)))
        (path / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.rmdir()
        _report("RLIMIT_AS", f"cgroup {kind} refused: {exc}")
        return None
    _report(f"cgroup-{kind}")
    return kind


def cgroup_path(group: str) -> Path | None:
    """Where `group` lives, if it exists (v2 or v1)."""
    for kind in ("v2", "v1"):
        if (_base(kind) / group).is_dir():
            return _base(kind) / group
    return None


def remove_cgroup(group: str) -> None:
    """Remove the worker's group, ending what its worker left running in it (a group with a process
    cannot be removed)."""
    path = cgroup_path(group)
    if path is None:
        return
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + REMOVE_WAIT_S
    while True:
        try:
            path.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:  # EBUSY: a killed process still exiting
                log.warning("event=cgroup-not-removed group=%s reason=%s", path, exc)
                return
        time.sleep(0.02)


def place_self_in_cgroup(group: str, memory_mb: int) -> bool:
    """Put this process, still root, in cgroup millgate/<group> as `place_in_cgroup` does for a worker; False
    when RLIMIT_AS is to be used instead. Once this process has dropped root it cannot remove its own
    group: the next sweep does (the first placement of every process, so the restarted runner's and the
    core's at its start), as for a worker whose core was killed."""
    return place_in_cgroup(group, os.getpid(), memory_mb) is not None


def limit_address_space(memory_mb: int) -> None:
    """RLIMIT_AS = what this process maps now + the function's budget + the runtime's headroom (the
    interpreter is not charged)."""
    mapped = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                mapped = int(line.split()[1]) * 1024
    limit = mapped + (memory_mb + RUNTIME_HEADROOM_MB) * MIB
    threading.stack_size(THREAD_STACK_BYTES)  # 8 MiB default stacks would eat the budget in address space
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
