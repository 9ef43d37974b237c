"""Dropping from root to a function's uid/gid and the supplementary groups its resources grant; the
one place the runtime changes identity. Outside root (a dev checkout) it cannot, and says so.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def can_switch_users() -> bool:
    return os.geteuid() == 0


def drop_privileges(uid: int, gid: int, extra_groups: list[int]) -> None:
    """Become uid:gid with exactly `extra_groups`; irreversible. Refuses root as a target."""
    if uid == 0 or gid == 0:
        raise PermissionError("functions never run as root")
    if not can_switch_users():
        log.warning(
            "event=not-root uid=%d gid=%d running-as=%d: run as root to isolate functions", uid, gid, os.geteuid()
        )
        return
    os.setgroups(sorted(set(extra_groups)))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise PermissionError(f"could not become uid {uid}")
