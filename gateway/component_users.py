"""A uid of its own for each system component that is not root (the uplink, each adapter, logship),
so none of them can read another's broker secret or state, nor the group CA key.

The uids come from `[gateway] component_uids` (a range no account uses) and need no passwd entries:
which component has which uid is kept in <state>/component-uids.json, so a component keeps its uid,
and the files it owns, across restarts and deployments however the set of adapters changes. Every
component's primary group is the service user's group (the `millgate` group), for what is shared
read-only; supervisord starts them as root and the child drops to its uid before running anything
(gateway/preload.py), named by the MILLGATE_RUN_AS variable in its environment.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from functions.privileges import drop_privileges
from gateway.atomic_file import write_atomic

ALLOCATION_FILE = "component-uids.json"
RUN_AS_ENV = "MILLGATE_RUN_AS"


class ComponentUidError(RuntimeError):
    """The configured range cannot give every component a uid of its own; the message says why."""


@dataclass(frozen=True)
class ComponentUser:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @property
    def owner(self) -> tuple[int, int]:
        return (self.uid, self.gid)

    def env_value(self) -> str:
        return f"{self.uid}:{self.gid}:{','.join(str(g) for g in self.groups)}"

    @classmethod
    def parse(cls, value: str) -> ComponentUser:
        """`uid:gid:group,group` as env_value writes it."""
        try:
            uid, gid, groups = value.split(":")
            return cls(int(uid), int(gid), tuple(int(g) for g in groups.split(",") if g))
        except ValueError:
            raise ComponentUidError(f"{RUN_AS_ENV}={value!r} is not uid:gid:groups") from None


def allocate(components: Iterable[str], uids: range, saved: Mapping[str, int]) -> dict[str, int]:
    """Each component's uid: the one it had if still in `uids`, else the lowest one nobody has."""
    wanted = sorted(set(components))
    kept = {name: uid for name, uid in saved.items() if name in wanted and uid in uids}
    taken = set(kept.values())
    free = (uid for uid in uids if uid not in taken)
    allocated = dict(kept)
    for name in wanted:
        if name not in allocated:
            uid = next(free, None)
            if uid is None:
                raise ComponentUidError(
                    f"[gateway] component_uids {uids.start}-{uids.stop - 1} has {len(uids)} uids for "
                    f"{len(wanted)} components; give it a wider range"
                )
            allocated[name] = uid
    return allocated


def load_allocation(state_dir: Path) -> dict[str, int]:
    path = state_dir / ALLOCATION_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ComponentUidError(f"{path}: unreadable ({exc}); move it aside and start again") from exc
    if not isinstance(saved, dict) or not all(isinstance(v, int) for v in saved.values()):
        raise ComponentUidError(f"{path}: not a JSON object of component -> uid; move it aside and start again")
    return {str(k): v for k, v in saved.items()}


def component_users(
    components: Mapping[str, tuple[int, ...]], uids: range, gid: int, state_dir: Path
) -> dict[str, ComponentUser]:
    """component -> its user, for components given with their supplementary groups; the allocation
    saved in the state dir. A uid an account already has is refused: files of that account's would
    be the component's."""
    allocated = allocate(components, uids, load_allocation(state_dir))
    for name, uid in sorted(allocated.items()):
        try:
            account = pwd.getpwuid(uid).pw_name
        except KeyError:
            continue
        raise ComponentUidError(
            f"uid {uid} ({name}) from [gateway] component_uids belongs to the account {account!r}; "
            "set component_uids to a range no account uses"
        )
    text = json.dumps(allocated, indent=2, sort_keys=True) + "\n"
    write_atomic(state_dir / ALLOCATION_FILE, text, 0o644, (0, 0) if os.geteuid() == 0 else None)
    return {name: ComponentUser(uid, gid, components[name]) for name, uid in allocated.items()}


def drop_from_environment(env: Mapping[str, str]) -> None:
    """In a component's process: become the user MILLGATE_RUN_AS names, if any. Already that user:
    nothing to do; neither root nor that user: refuse, rather than run as someone else."""
    value = env.get(RUN_AS_ENV)
    if not value:
        return
    user = ComponentUser.parse(value)
    if os.geteuid() == user.uid and os.getuid() == user.uid:
        return
    if os.geteuid() != 0:
        raise ComponentUidError(f"{RUN_AS_ENV} names uid {user.uid}, but this process is uid {os.geteuid()}")
    drop_privileges(user.uid, user.gid, list(user.groups))
