"""Fixtures for the storage tests: a real small filesystem to fill up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs): a full disk fails at COMMIT or in the WAL, not only at INSERT
    as SQLite's page limit does."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"the kernel refuses a tmpfs mount here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
