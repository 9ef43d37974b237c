"""Memory limits for a worker process: a cgroup (v2, or v1's memory controller) where this machine lets
millgate write one, otherwise RLIMIT_AS set by the worker itself before user code loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024
THREAD_STACK_BYTES = 1024 * 1024
RUNTIME_HEADROOM_MB = 64  # the runtime's own MQTT and I/O threads, started after the limit is set


def cgroup_kind() -> str:
    """'v2', 'v1' or 'none': what `place_in_cgroup` would use here."""
    if (CGROUP_ROOT / "cgroup.controllers").exists() and os.access(CGROUP_ROOT, os.W_OK):
        return "v2"
    if (CGROUP_ROOT / "memory" / "cgroup.procs").exists() and os.access(CGROUP_ROOT / "memory", os.W_OK):
        return "v1"
    return "none"


def place_in_cgroup(group: str, pid: int, memory_mb: int) -> str | None:
    """Put `pid` in cgroup millgate/<group> with a memory cap; the kind used, or None if none could be."""
    kind = cgroup_kind()
    try:
        if kind == "v2":
            path = CGROUP_ROOT / "millgate" / group
            path.mkdir(parents=True, exist_ok=True)
            (path / "memory.max").write_text(str(memory_mb * MIB))
            (path / "memory.swap.max").write_text("0")
        elif kind == "v1":
            path = CGROUP_ROOT / "memory" / "millgate" / group
            path.mkdir(parents=True, exist_ok=True)
            (path / "memory.limit_in_bytes").write_text(str(memory_mb * MIB))
        else:
            return None
        (path / "cgroup.procs").write_text(str(pid))
        return kind
    except OSError as exc:
        log.info("event=cgroup-unavailable kind=%s reason=%s fallback=RLIMIT_AS", kind, exc)
        return None


def remove_cgroup(group: str) -> None:
    for base in (CGROUP_ROOT / "millgate", CGROUP_ROOT / "memory" / "millgate"):
        with contextlib.suppress(OSError):
            (base / group).rmdir()


def limit_address_space(memory_mb: int) -> None:
    """RLIMIT_AS = what this process maps now + the function's budget (the interpreter is not charged)."""
    mapped = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                mapped = int(line.split()[1]) * 1024
    limit = mapped + (memory_mb + RUNTIME_HEADROOM_MB) * MIB
    threading.stack_size(THREAD_STACK_BYTES)  # 8 MiB default stacks would eat the budget in address space
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
