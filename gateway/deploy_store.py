"""Deployment snapshots and history under <state>/deployments: one copy of the config dir per
deployment (<n>/config), a `current` link every supervised process reads its config through, and
history.json (number, version, time, source, result), written atomically.

It copies and records; it starts, stops and validates nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway.atomic_file import write_atomic

DEPLOYMENTS = "deployments"
CURRENT = "current"
HISTORY = "history.json"
HISTORY_MAX = 200  # entries kept in history.json; older ones are dropped
_SKIP = frozenset({"__pycache__", ".git"})


class DeployStoreError(RuntimeError):
    pass


@dataclass
class HistoryEntry:
    number: int
    version: str  # sha256 (12 hex) of the config dir's files, or the bundle's version
    time: str  # ISO 8601 UTC
    source: str
    by: str  # run | deploy | rollback | cloud
    result: str  # running | succeeded | rolled-back | rollback-failed | refused | staged
    message: str = ""
    changes: dict[str, Any] = field(default_factory=dict)


def known_fields(kind: type[Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of a saved record that dataclass `kind` has: another millgate version may have added
    others (an OTA rollback reads the newer one's files)."""
    names = {f.name for f in fields(kind)}
    return {key: value for key, value in raw.items() if key in names}


def _history_entry(raw: Any, where: Path) -> HistoryEntry:
    """One entry of the history file, as another millgate version may have written it: keys this one
    does not know are left out (a newer one added them; an OTA rollback reads its file), and a missing
    one is a DeployStoreError naming the file, not a crash of `millgate run`."""
    try:
        return HistoryEntry(**known_fields(HistoryEntry, raw))
    except (AttributeError, TypeError) as exc:
        raise DeployStoreError(f"{where}: an entry this millgate cannot read ({exc}): {raw!r:.200}") from exc


def config_digest(config_dir: Path) -> str:
    """A fingerprint of every file in a config dir (names and contents), 12 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(config_files(config_dir)):
        digest.update(str(path.relative_to(config_dir)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def config_files(root: Path) -> Iterator[Path]:
    """Every file of a config dir, caches and VCS metadata left out (see _walk)."""
    for directory, files in _walk(root):
        yield from (directory / name for name in files)


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """(directory, its file names) under `root`, caches and VCS metadata left out. Links to directories
    are followed, as the deployment's copy follows them (a function's code may live elsewhere), each
    real directory once, so a link loop ends."""
    seen: set[str] = set()
    for directory, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if d not in _SKIP]
        yield Path(directory), files


def _copy_tree(source: Path, target: Path) -> None:
    """Copy with modes and owners kept: a service-user component must read its copy as it read the original."""
    shutil.copytree(source, target, symlinks=False, ignore=shutil.ignore_patterns(*_SKIP))
    if os.geteuid() != 0:
        return
    for directory, files in _walk(source):
        for original in [directory, *(directory / name for name in files)]:
            stat = original.stat()
            os.chown(target / original.relative_to(source), stat.st_uid, stat.st_gid)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DeploymentStore:
    def __init__(self, state_dir: Path, keep: int = 5):
        self.root = state_dir / DEPLOYMENTS
        self.keep = keep

    @property
    def current_link(self) -> Path:
        return self.root / CURRENT

    @property
    def current_config(self) -> Path:
        """The path every supervised process gets as --config: stable across deployments."""
        return self.current_link / "config"

    @property
    def history_file(self) -> Path:
        return self.root / HISTORY

    def config_of(self, number: int) -> Path:
        return self.root / str(number) / "config"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One deployment at a time on a gateway (run, deploy, cloud); waits for the one in progress."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def current(self) -> int | None:
        try:
            return int(os.readlink(self.current_link))
        except (OSError, ValueError):
            return None

    def snapshot(self, source: Path) -> int:
        """Copy `source` into a new numbered snapshot; returns its number (not yet current)."""
        self.root.mkdir(parents=True, exist_ok=True)
        number = max(self._numbers(), default=0) + 1
        staging = self.root / f".{number}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        os.chmod(staging, 0o755)  # components running as the service user read their config here
        try:
            _copy_tree(source, staging / "config")
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise DeployStoreError(f"{source}: cannot copy the config into {self.root}: {exc}") from exc
        os.replace(staging, self.root / str(number))
        return number

    def set_current(self, number: int) -> None:
        """Point `current` at snapshot `number` in one rename: a process starting now reads one or the other.
        Pruning spares it and the one current until now: what a failing deployment rolls back to, however
        many failed deployments came after the last good one."""
        previous = self.current()
        tmp = self.root / f".{CURRENT}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(str(number), tmp)
        os.replace(tmp, self.current_link)
        self._prune(protect={number} if previous is None else {number, previous})

    def _numbers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit() and p.is_dir())

    def _prune(self, protect: set[int]) -> None:
        numbers = self._numbers()
        for number in numbers[: max(len(numbers) - self.keep, 0)]:
            if number not in protect:
                shutil.rmtree(self.root / str(number), ignore_errors=True)

    def exists(self, number: int) -> bool:
        return self.config_of(number).is_dir()

    # ---- history -------------------------------------------------------------------------

    def history(self) -> list[HistoryEntry]:
        try:
            raw = json.loads(self.history_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise DeployStoreError(f"{self.history_file}: unreadable: {exc}") from exc
        return [_history_entry(entry, self.history_file) for entry in raw]

    def record(self, entry: HistoryEntry) -> None:
        """Add `entry`, or replace the last entry with the same number and `by` (a result update). A
        refusal is final and numbered 0, so the next refusal is added after it, never over it."""
        entries = self.history()
        last = entries[-1] if entries else None
        if last is not None and (last.number, last.by) == (entry.number, entry.by) and last.result != "refused":
            entries[-1] = entry
        else:
            entries.append(entry)
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps([asdict(e) for e in entries[-HISTORY_MAX:]], indent=2)
        write_atomic(self.history_file, text, 0o644)

    def last_from(self, source: Path) -> HistoryEntry | None:
        """The newest deployment attempted from `source`, whatever became of it: a config that was rolled
        back is not tried again at the next start unless the source changed since."""
        for entry in reversed(self.history()):
            if entry.source == str(source) and entry.by in ("run", "deploy") and entry.result != "refused":
                return entry
        return None
