"""A function's own log: its workers' stdout and stderr, one line per event, in
log_dir/user/<function>.log, rotated so that all its files together stay under the function's cap.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

BACKUPS = 4


class UserLog:
    def __init__(self, path: Path, max_bytes: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max(max_bytes // (BACKUPS + 1), 1024), backupCount=BACKUPS, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, line: str) -> None:
        record = logging.LogRecord("user", logging.INFO, "", 0, line.rstrip("\n"), None, None)
        self._handler.emit(record)

    def set_cap(self, max_bytes: int) -> None:
        """A new cap for all the files together (a deployment changed log_max_bytes)."""
        self._handler.maxBytes = max(max_bytes // (BACKUPS + 1), 1024)

    def close(self) -> None:
        self._handler.close()
