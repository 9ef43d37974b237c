"""Each non-root component's accounts and state: which uid runs the uplink, each adapter and logship
(gateway/component_users.py), the directory each of them owns under the state dir, and read access
for the uplink to the cloud certificate and key.

Also moves state from where millgate 0.1 kept it (spool, bulk store and logship offsets directly in
the state dir, which only the service user could write) into those directories before a start, and
merges what a rollback to 0.1 left there into what is in them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.acl import UPLINK, adapter_component, needs_uplink
from gateway.adapter_config import ModbusAdapter
from gateway.atomic_file import fsync_dir
from gateway.component_users import ComponentUser, component_users
from gateway.config_loader import LoadedConfig
from gateway.owned_dirs import chown_tree, make_owned_dir
from gateway.paths import GatewayPaths
from gateway.resource_grants import setfacl
from gateway.service_user import ServiceUser
from gateway.supervisor_config import LOGSHIP
from storage.bulk import SCHEMA as BULK_SCHEMA
from storage.spool_file import FileMerge, merge_spool

log = logging.getLogger(__name__)

SUFFIX_MERGING = ".merging"


@dataclass(frozen=True)
class LegacyGroup:
    """Files that move together (an SQLite database with its WAL and shared memory is one thing), in the
    order they are moved: the database first. Where both places hold the group: `merge` appends the
    old place's rows to the new place's database (targets, sources by name) and says what it merged,
    for the log; with `keep_newer` the file written last stays."""

    component: str
    names: tuple[str, ...]
    merge: Callable[[dict[str, Path], dict[str, Path]], str] | None = None
    keep_newer: bool = False


def _merge_spools(target: dict[str, Path], source: dict[str, Path]) -> str:
    messages, dead = merge_spool(target["spool.db"], source["spool.db"])
    return f"messages={messages} dead_letters={dead}"


def _merge_bulk_stores(target: dict[str, Path], source: dict[str, Path]) -> str:
    """Waiting records and counters as rows; each pending batch with its file, linked into the new
    batch dir under the name storage/bulk.py gives a batch of its new id (a later cut, named by the
    next id, never lands on it), and the directory synced before the row is committed."""
    batch_dir, old_batch_dir = target["bulk"], source["bulk"]
    batch_dir.mkdir(mode=0o700, exist_ok=True)
    missing: list[str] = []

    def link_batch(db: sqlite3.Connection, row: dict[str, object]) -> dict[str, object] | None:
        old_file = old_batch_dir / str(row["file"])
        if not old_file.is_file():
            missing.append(old_file.name)
            return None
        (batch_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM main.batches").fetchone()
        name = f"batch-{batch_id:012d}.jsonl.gz"
        (batch_dir / name).unlink(missing_ok=True)  # left by a merge cut short before its commit
        os.link(old_file, batch_dir / name)
        fsync_dir(batch_dir)
        return row | {"id": batch_id, "file": name}

    merge = FileMerge(target["bulk.db"], source["bulk.db"], BULK_SCHEMA)
    try:
        records = merge.copy_rows("records")
        batches = merge.copy_rows("batches", link_batch)
        merge.add_counters()
    finally:
        merge.close()
    if missing:
        log.warning(
            "event=bulk-batches-missing files=%s dir=%s detail=listed in %s but not there; their records are lost",
            ",".join(missing),
            old_batch_dir,
            source["bulk.db"],
        )
    return f"records={records} batches={batches}"


# millgate 0.1's places for the uplink's and logship's files, relative to the state dir
LEGACY_GROUPS = (
    LegacyGroup("uplink", ("spool.db", "spool.db-wal", "spool.db-shm", "spool.db.reserve"), _merge_spools),
    LegacyGroup("uplink", ("bulk.db", "bulk.db-wal", "bulk.db-shm", "bulk", "bulk.db.reserve"), _merge_bulk_stores),
    LegacyGroup("logship", ("logship-offsets.json",), keep_newer=True),
)
# room kept back for a full disk (storage/disk_reserve.py), not data: where both places hold one, the
# older place's goes
RESERVES = frozenset({"spool.db.reserve", "bulk.db.reserve"})


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
    their components' directories, each group of files whole (a move cut short is finished). Where
    both places hold a database (a rollback to millgate 0.1 spooled in the old place), the old one's
    rows are merged into the new one; of two logship offsets files the newer is kept."""
    for group in LEGACY_GROUPS:
        _settle_group(paths.state_dir, group)


def _settle_group(state_dir: Path, group: LegacyGroup) -> None:
    old = [state_dir / name for name in group.names]
    new = [state_dir / group.component / name for name in group.names]
    merging = [state_dir / _merging_name(name, group.names[0]) for name in group.names]
    if any(os.path.lexists(path) for path in merging) and not _finish_merge(group, old, merging, new):
        return
    for source, target in zip(old, new, strict=True):
        if source.name in RESERVES and os.path.lexists(source) and os.path.lexists(target):
            source.unlink()
    if not any(os.path.lexists(path) for path in old):
        return
    if not any(os.path.lexists(path) for path in new):
        new[0].parent.mkdir(mode=0o700, exist_ok=True)
        _move_group(old, new)
        log.info("event=state-moved files=%s to=%s", ",".join(group.names), new[0].parent)
    elif _moved_in_part(old, new):
        _move_group(old, new)
        log.warning(
            "event=state-move-finished files=%s to=%s detail=an earlier move was cut short",
            ",".join(group.names),
            new[0].parent,
        )
    elif group.merge is not None and os.path.lexists(old[0]) and os.path.lexists(new[0]):
        try:
            FileMerge.forget(new[0])  # what it remembers of an earlier merge was with another file
        except sqlite3.Error as exc:
            _log_merge_failed(old[0], new[0], exc)
            return
        _move_group(old, merging)
        _finish_merge(group, old, merging, new)
    elif group.keep_newer and old[0].is_file() and new[0].is_file():
        _keep_newer(old[0], new[0])
    else:
        log.warning(
            "event=state-not-moved files=%s reason=%s/ holds some of them already and the rest do not fit "
            "with those; the older ones stay where they are: move or remove them by hand",
            ",".join(name for name, path in zip(group.names, old, strict=True) if os.path.lexists(path)),
            group.component,
        )


def _finish_merge(group: LegacyGroup, old: list[Path], merging: list[Path], new: list[Path]) -> bool:
    """Merge the database set aside under its `.merging` names into the new place's, then remove it;
    True once nothing is left aside. A merge cut short goes on where it stopped (FileMerge)."""
    if _moved_in_part(old, merging):  # set aside in part
        _move_group(old, merging)
    if not os.path.lexists(merging[0]):  # merged, and removed in part
        _remove_group(merging)
        return True
    if not any(os.path.lexists(path) for path in new):  # the new place's database went meanwhile
        new[0].parent.mkdir(mode=0o700, exist_ok=True)
        _move_group(merging, new)
        log.info("event=state-moved files=%s to=%s", ",".join(group.names), new[0].parent)
        return True
    if group.merge is None or not os.path.lexists(new[0]):
        log.warning(
            "event=state-not-merged files=%s reason=%s has no database to merge them into", merging[0], new[0].parent
        )
        return False
    owner = os.lstat(new[0])
    log.info("event=state-merging from=%s into=%s size=%d", merging[0], new[0], _group_bytes(merging))
    try:
        merged = group.merge(dict(zip(group.names, new, strict=True)), dict(zip(group.names, merging, strict=True)))
    except (sqlite3.Error, OSError) as exc:
        _log_merge_failed(merging[0], new[0], exc)
        return False
    _remove_group(merging)
    with contextlib.suppress(sqlite3.Error):  # left, it is dropped before the next merge starts
        FileMerge.forget(new[0])
    _hand_to(new, (owner.st_uid, owner.st_gid))
    log.info("event=state-merged from=%s into=%s %s", old[0], new[0], merged)
    return True


def _log_merge_failed(source: Path, target: Path, exc: BaseException) -> None:
    log.error(
        "event=state-merge-failed from=%s into=%s error=%s detail=what was merged stays merged, the rest is "
        "tried again at each start; if the disk is full free space in %s; if a file is damaged, move it aside",
        source,
        target,
        exc,
        target.parent,
    )


def _hand_to(paths: list[Path], owner: tuple[int, int]) -> None:
    """Under root, what a merge made or linked in the new place to the owner of the database there
    (the component's uid), as ensure_component_dirs does for everything in it."""
    if os.geteuid() != 0:
        return
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            chown_tree(path, owner)
        elif os.path.lexists(path):
            os.chown(path, *owner, follow_symlinks=False)


def _moved_in_part(sources: list[Path], targets: list[Path]) -> bool:
    """The group's first members are at `targets` and the rest at `sources`, none at both: what a move
    of one member after another (in order) leaves when it is cut short."""
    at_target = []
    for source, target in zip(sources, targets, strict=True):
        there, here = os.path.lexists(target), os.path.lexists(source)
        if there and here:
            return False
        if there or here:
            at_target.append(there)
    return len(at_target) > 1 and at_target[0] and not at_target[-1] and at_target == sorted(at_target, reverse=True)


def _move_group(sources: list[Path], targets: list[Path]) -> None:
    """Rename each member there is, in order, each rename on disk before the next (both directories
    synced): a move cut short leaves a prefix of the group moved, which the next start finishes."""
    for source, target in zip(sources, targets, strict=True):
        if os.path.lexists(source):
            os.replace(source, target)
            fsync_dir(target.parent)
            fsync_dir(source.parent)


def _remove_group(paths: list[Path]) -> None:
    """The database first: a removal cut short never leaves its WAL without it."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    fsync_dir(paths[0].parent)


def _keep_newer(old: Path, new: Path) -> None:
    """Of two copies of a small state file, the one written last (a rollback's run wrote the old one)."""
    if old.stat().st_mtime > new.stat().st_mtime:
        owner = os.lstat(new)
        os.replace(old, new)
        if os.geteuid() == 0:
            os.chown(new, owner.st_uid, owner.st_gid, follow_symlinks=False)
        fsync_dir(new.parent)
        kept = "older place's (written last)"
    else:
        old.unlink()
        kept = "newer place's"
    fsync_dir(old.parent)
    log.info("event=state-kept-newer file=%s kept=%s", new, kept)


def _group_bytes(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file() and not path.is_symlink())


def _merging_name(name: str, database: str) -> str:
    """spool.db-wal -> spool.db.merging-wal: SQLite finds a database's WAL by its name."""
    if name.startswith(database):
        return database + SUFFIX_MERGING + name[len(database) :]
    return name + SUFFIX_MERGING


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
