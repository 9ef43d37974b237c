"""Each non-root component's accounts and state: which uid runs the uplink, each adapter and logship
(gateway/component_users.py), the directory each of them owns under the state dir, and read access
for the uplink to the cloud certificate and key.

Also moves state from where millgate 0.1 kept it (spool, bulk store and logship offsets directly in
the state dir, which only the service user could write) into those directories, once, before the
first start that uses them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from gateway.acl import UPLINK, adapter_component, needs_uplink
from gateway.adapter_config import ModbusAdapter
from gateway.component_users import ComponentUser, component_users
from gateway.config_loader import LoadedConfig
from gateway.owned_dirs import make_owned_dir
from gateway.paths import GatewayPaths
from gateway.resource_grants import setfacl
from gateway.service_user import ServiceUser
from gateway.supervisor_config import LOGSHIP

log = logging.getLogger(__name__)

# millgate 0.1's places for the uplink's and logship's files, relative to the state dir, in the groups
# that move together (an SQLite database with its WAL and shared memory is one thing)
LEGACY_GROUPS = (
    ("uplink", ("spool.db", "spool.db-wal", "spool.db-shm", "spool.db.reserve")),
    ("uplink", ("bulk.db", "bulk.db-wal", "bulk.db-shm", "bulk")),
    ("logship", ("logship-offsets.json",)),
)


class ComponentStateError(RuntimeError):
    """A component's account or state cannot be set up; the message says which and why."""


def own_user_components(loaded: LoadedConfig, paths: GatewayPaths) -> dict[str, tuple[int, ...]]:
    """The components that run under a uid of their own -> their supplementary groups: a Modbus RTU
    adapter is in the group of each serial device it opens (`dialout` for /dev/ttyUSB0), logship in
    the log dir's (`adm` for the package's /var/log/millgate, 0750)."""
    config = loaded.gateway
    found: dict[str, tuple[int, ...]] = {}
    if needs_uplink(config):
        found[UPLINK] = ()
    for name, adapter in loaded.adapters.items():
        groups: set[int] = set()
        if isinstance(adapter.config, ModbusAdapter):
            for device in adapter.config.devices:
                # a missing port: the adapter reports it itself
                if device.transport == "rtu" and isinstance(device.port, str) and os.path.exists(device.port):
                    groups.add(os.stat(device.port).st_gid)
        found[adapter_component(name)] = tuple(sorted(groups))
    cloudwatch = config.logging.cloudwatch
    if cloudwatch is not None and cloudwatch.enabled:
        found[LOGSHIP] = (paths.log_dir.stat().st_gid,) if paths.log_dir.exists() else ()
    return found


def component_accounts(loaded: LoadedConfig, paths: GatewayPaths, service: ServiceUser) -> dict[str, ComponentUser]:
    """component -> its own user, when the gateway starts as root and the service user exists;
    otherwise none (a development checkout: everything runs as whoever started it, or as root)."""
    if os.geteuid() != 0 or service.uid == 0:
        return {}
    try:
        return component_users(
            own_user_components(loaded, paths), loaded.gateway.gateway.component_uid_range, service.gid, paths.state_dir
        )
    except (OSError, RuntimeError) as exc:
        raise ComponentStateError(f"component uids: {exc}") from exc


def move_legacy_state(paths: GatewayPaths) -> None:
    """Before anything runs: the spool, bulk store and logship offsets from the state dir itself into
    their components' directories, each group of files whole, and only where none of the group is yet
    (both places holding some: left as they are, and said)."""
    for component, names in LEGACY_GROUPS:
        old = [paths.state_dir / name for name in names]
        new = [paths.state_dir / component / name for name in names]
        if not any(os.path.lexists(path) for path in old):
            continue
        if any(os.path.lexists(path) for path in new):
            log.warning(
                "event=state-not-moved files=%s reason=%s/ has its own already; the older ones stay where they are",
                ",".join(names),
                component,
            )
            continue
        new[0].parent.mkdir(mode=0o700, exist_ok=True)
        for source, target in zip(old, new, strict=True):
            if os.path.lexists(source):
                os.replace(source, target)
        log.info("event=state-moved files=%s to=%s", ",".join(names), new[0].parent)


def ensure_component_dirs(
    loaded: LoadedConfig, paths: GatewayPaths, accounts: dict[str, ComponentUser], service: ServiceUser
) -> None:
    """<state>/uplink, <state>/logship and <state>/opcua/<adapter>, each 0700 and, with everything
    in it, owned by the uid its component runs as."""
    owned = [(paths.uplink_dir, UPLINK), (paths.logship_dir, LOGSHIP)]
    opcua = [name for name, a in loaded.adapters.items() if a.config.protocol == "opcua"]
    if opcua:
        _make_dir(paths.state_dir / "opcua", 0o755, (0, service.gid) if os.geteuid() == 0 else service.owner)
        owned += [(paths.opcua_dir(name), adapter_component(name)) for name in opcua]
    for directory, component in owned:
        account = accounts.get(component)
        _make_dir(directory, 0o700, account.owner if account else service.owner)


def _make_dir(path: Path, mode: int, owner: tuple[int, int]) -> None:
    try:
        make_owned_dir(path, mode, owner if os.geteuid() == 0 else None, whole_tree=True)
    except OSError as exc:
        raise ComponentStateError(f"{path}: cannot create or hand to uid {owner[0]}: {exc.strerror}") from exc


def grant_cloud_files(loaded: LoadedConfig, accounts: dict[str, ComponentUser]) -> None:
    """The uplink's own uid may read the cloud CA, certificate and key (POSIX ACL entries, and search
    on the directories above them): the operator's files keep their owner and mode."""
    cloud = loaded.gateway.cloud
    uplink = accounts.get(UPLINK)
    if cloud is None or uplink is None:
        return
    for path in (cloud.ca_file, cloud.cert_file, cloud.key_file):
        problem = setfacl("-m", f"u:{uplink.uid}:r", str(path))
        for parent in Path(path).parents:
            if problem is None and not stat.S_IMODE(parent.stat().st_mode) & 0o001:
                problem = setfacl("-m", f"u:{uplink.uid}:x", str(parent))
        if problem:
            raise ComponentStateError(
                f"[cloud] {path}: cannot let the uplink (uid {uplink.uid}) read it: {problem}; "
                "or make it readable by the millgate group"
            )
