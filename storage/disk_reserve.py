"""Room kept back on the spool's filesystem for the writes that make room.

In WAL mode SQLite writes every change, deletions included, to the WAL before the database file, so on
a filesystem with no free byte left the spool could neither delete what the cloud acknowledged nor
drop its oldest messages: full for good. A reserve file of a few MB, allocated while there is space,
is given back at the first full-disk error; once the filesystem again has room for it twice over, it
is taken again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class DiskReserve:
    def __init__(self, path: Path, size: int):
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        return self.path.exists()

    def take(self) -> bool:
        """Allocate the reserve if it is not held and the filesystem has room for it twice over."""
        if self.held:
            return True
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return False
        if fs.f_bavail * fs.f_frsize < 2 * self.size:
            return False
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True

    def give_back(self) -> bool:
        """Free the reserve's space; True if there was one to free."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
