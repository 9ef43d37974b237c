"""Where each component's log lives under log_dir (system/<component>.log, user/<function>.log and their
rotated .1 ... .N), the timestamp a line starts with, and a reader that follows a file across
supervisord's and the function logs' rotation (rename to .1, a new file in its place).

It reads; it never writes, truncates or rotates a log.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

# our components: 2024-05-01T10:00:00.123Z (UTC); mosquitto (log_timestamp_format): 2024-05-01T10:00:00: and
# supervisord, Python's logging default: 2024-05-01 10:00:00,123, both in local time (strftime of
# localtime(3), the process's TZ), which is what a stamp without a zone is read as
# An on-demand function worker's line comes prefixed `[<function> pid=N] ` (functions/worker_process.py),
# before whatever the function's own logging put first.
_STAMP = re.compile(
    r"^(?:\[[A-Za-z0-9_.-]+ pid=\d+\] )?"
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,6}))?(Z|[+-]\d{2}:?\d{2})?"
)
# how much of a file's start tells it apart from a newer file that was given the same inode number
HEAD_BYTES = 64


@dataclass(frozen=True)
class Resume:
    """Where to read on from: `position` bytes into the file whose inode is `inode` and whose first
    bytes are `head` (see `file_head`; empty: not known, the inode alone decides)."""

    inode: int
    position: int
    head: str = ""


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
    """The epoch seconds a log line starts with (after a function worker's `[<function> pid=N] `), or None
    (a traceback's continuation, a bare print). A stamp without a zone is local time, as mosquitto and
    supervisord write it."""
    match = _STAMP.match(line)
    if not match:
        return None
    day, clock, fraction, zone = match.groups()
    try:
        # naive: timestamp() goes through mktime(3), which applies TZ and daylight saving like they did
        stamp = datetime.fromisoformat(f"{day}T{clock}{zone or ''}").timestamp()
    except (ValueError, OverflowError):
        return None
    return stamp + (float(f"0.{fraction}") if fraction else 0.0)


def file_head(handle: BinaryIO, length: int = HEAD_BYTES) -> str:
    """A fingerprint of an open file's first `length` bytes (fewer while it is shorter): their count and hash."""
    data = os.pread(handle.fileno(), length, 0)
    return f"{len(data)}:{hashlib.blake2b(data, digest_size=8).hexdigest()}"


def starts_with(handle: BinaryIO, head: str) -> bool:
    """Whether an open file's first bytes are the ones `head` fingerprints (an unknown head: True)."""
    return not head or file_head(handle, int(head.partition(":")[0])) == head


class FollowedFile:
    """New complete lines of one log file since the last read, across rotation. `position` is where the
    next read starts in the file whose inode is `inode` (and whose start `head` fingerprints), so a
    caller can persist and resume it."""

    def __init__(self, path: Path, inode: int | None = None, position: int = 0, head: str = ""):
        self.path = path
        self.inode = inode
        self.position = position
        self.head = head

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
        if self.inode is not None and (stat.st_ino != self.inode or not self._starts_as_read(self.path)):
            # rotated, perhaps several times while nobody read: finish the file we were in (now
            # <name>.N) and every newer generation, oldest first, before starting on the live one. (A
            # live file with our inode but not our first bytes is a new file that reused the number.)
            generations, resume_first = self._rotated_since()
            for index, (path, inode, size) in enumerate(generations):
                if index > 0 or not resume_first:
                    self.inode, self.position, self.head = inode, 0, ""
                lines += self._read(path, inode, limit_bytes, finished=True)
                if self.position < size:  # stopped at limit_bytes: carry on in this file next time
                    return lines
            self.inode, self.position, self.head = stat.st_ino, 0, ""
        self.inode = stat.st_ino
        return lines + self._read(self.path, stat.st_ino, limit_bytes)

    def _rotated_since(self) -> tuple[list[tuple[Path, int, int]], bool]:
        """The rotated generations still to read, oldest first, each with its inode and size, and
        whether reading resumes at `position` in the first. That first is the file we were in; when it
        is gone (rotated out of the backups while nobody read), every generation left is newer than it,
        so all of them are read from their start, and so is a file that only reuses its inode number.
        (The one case where that reads lines again: the live file truncated or removed by hand, as
        `supervisorctl clear` does, with its backups left; repeating them beats skipping a rotation.)"""
        found = []
        for path in LogSource("", self.path).generations()[:-1]:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((path, stat.st_ino, stat.st_size))
        for index, (path, inode, size) in enumerate(found):
            if inode == self.inode and size >= self.position and self._starts_as_read(path):
                return found[index:], True
        return found, False

    def _starts_as_read(self, path: Path) -> bool:
        try:
            with path.open("rb") as handle:
                return starts_with(handle, self.head)
        except OSError:
            return False

    def _read(self, path: Path, inode: int, limit_bytes: int, finished: bool = False) -> list[tuple[str, Resume]]:
        """Complete lines from `position` on in the file at `path`, if that still is the one whose inode is
        `inode` (else none: rotated again since we looked, and the next read follows it). In a `finished`
        file (rotated, so nothing more is written to it) a last line without its newline is complete too."""
        try:
            with path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_ino != inode:
                    return []
                if stat.st_size < self.position or not starts_with(handle, self.head):
                    # truncated in place, or a new file given the old one's inode: nothing of it read yet
                    self.position = 0
                head = file_head(handle)
                handle.seek(self.position)
                data = handle.read(limit_bytes)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if (finished and data and len(data) < limit_bytes) or (end < 0 and len(data) == limit_bytes):
            # the end of a finished file; or a line longer than a whole read (a process printing
            # without newlines), passed on in pieces rather than waited on for ever
            end = len(data) - 1
        if end < 0:
            return []
        self.head = head
        found: list[tuple[str, Resume]] = []
        start = self.position
        for raw in data[: end + 1].splitlines(keepends=True):
            # a byte line may decode to several text lines (a lone \r): all but its last resume at
            # its start, so stopping half-way through repeats lines rather than skipping them
            parts = raw.decode("utf-8", errors="replace").splitlines()
            found += [(part, Resume(inode, start, head)) for part in parts[:-1]]
            if parts:
                found.append((parts[-1], Resume(inode, start + len(raw), head)))
            start += len(raw)
        self.position += end + 1
        return found
