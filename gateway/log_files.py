"""Where each component's log lives under log_dir (system/<component>.log, user/<function>.log and their
rotated .1 ... .N), the timestamp a line starts with, and a reader that follows a file across
supervisord's and the function logs' rotation (rename to .1, a new file in its place).

It reads; it never writes, truncates or rotates a log.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# our components: 2024-05-01T10:00:00.123Z; mosquitto: 2024-05-01T10:00:00: ; supervisord: 2024-05-01 10:00:00,123
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,6}))?Z?")


@dataclass(frozen=True)
class Resume:
    """Where to read on from: `position` bytes into the file whose inode is `inode`."""

    inode: int
    position: int


@dataclass(frozen=True)
class LogSource:
    component: str  # as `millgate status` names it: core, uplink, adapter-line1, fn-anomaly, broker
    path: Path

    def generations(self) -> list[Path]:
        """Rotated files oldest first, then the live one."""
        rotated = sorted(
            (p for p in self.path.parent.glob(f"{self.path.name}.*") if p.suffix[1:].isdigit()),
            key=lambda p: int(p.suffix[1:]),
            reverse=True,
        )
        return [*rotated, self.path]


def log_sources(log_dir: Path) -> dict[str, LogSource]:
    """Every component with a log under log_dir: system/<name>.log as <name>, user/<fn>.log as fn-<fn>."""
    found: dict[str, LogSource] = {}
    for path in sorted((log_dir / "system").glob("*.log")):
        found[path.stem] = LogSource(path.stem, path)
    for path in sorted((log_dir / "user").glob("*.log")):
        found[f"fn-{path.stem}"] = LogSource(f"fn-{path.stem}", path)
    return found


def line_time(line: str) -> float | None:
    """The UTC epoch seconds a log line starts with, or None (a traceback's continuation, a bare print)."""
    match = _STAMP.match(line)
    if not match:
        return None
    day, clock, fraction = match.groups()
    try:
        stamp = datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return stamp + (float(f"0.{fraction}") if fraction else 0.0)


class FollowedFile:
    """New complete lines of one log file since the last read, across rotation. `position` is where the
    next read starts in the file whose inode is `inode`, so a caller can persist and resume it."""

    def __init__(self, path: Path, inode: int | None = None, position: int = 0):
        self.path = path
        self.inode = inode
        self.position = position

    def at_end(self) -> FollowedFile:
        try:
            stat = self.path.stat()
            self.inode, self.position = stat.st_ino, stat.st_size
        except FileNotFoundError:
            self.inode, self.position = None, 0
        return self

    def read_lines(self, limit_bytes: int = 4 * 1024 * 1024) -> list[str]:
        return [line for line, _ in self.read_marked(limit_bytes)]

    def read_marked(self, limit_bytes: int = 4 * 1024 * 1024) -> list[tuple[str, Resume]]:
        """New lines, each with where reading resumes once it has been dealt with: persisting the mark
        of the last line a consumer is done with (not `position`) loses nothing across a restart."""
        lines: list[tuple[str, Resume]] = []
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return lines
        if self.inode is not None and stat.st_ino != self.inode:
            # rotated, perhaps several times while nobody read: finish the file we were in (now
            # <name>.N) and every newer generation, oldest first, before starting on the live one
            for path, inode, size in self._rotated_since(self.inode):
                if inode != self.inode:
                    self.inode, self.position = inode, 0
                lines += self._read(path, limit_bytes)
                if self.position < size:  # stopped at limit_bytes: carry on in this file next time
                    return lines
            self.inode, self.position = stat.st_ino, 0
        elif stat.st_size < self.position:  # truncated in place
            self.position = 0
        self.inode = stat.st_ino
        return lines + self._read(self.path, limit_bytes)

    def _rotated_since(self, inode: int) -> list[tuple[Path, int, int]]:
        """The rotated generations from the one whose inode is `inode` to <name>.1, oldest first, each
        with its inode and size; empty when that file is gone (rotated out of the backups)."""
        found = []
        for path in LogSource("", self.path).generations()[:-1]:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((path, stat.st_ino, stat.st_size))
        starts = [i for i, (_, ino, _) in enumerate(found) if ino == inode]
        return found[starts[0] :] if starts else []

    def _read(self, path: Path, limit_bytes: int) -> list[tuple[str, Resume]]:
        try:
            with path.open("rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                handle.seek(self.position)
                data = handle.read(limit_bytes)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        found: list[tuple[str, Resume]] = []
        start = self.position
        for raw in data[: end + 1].splitlines(keepends=True):
            # a byte line may decode to several text lines (a lone \r): all but its last resume at
            # its start, so stopping half-way through repeats lines rather than skipping them
            parts = raw.decode("utf-8", errors="replace").splitlines()
            found += [(part, Resume(inode, start)) for part in parts[:-1]]
            if parts:
                found.append((parts[-1], Resume(inode, start + len(raw))))
            start += len(raw)
        self.position += end + 1
        return found
