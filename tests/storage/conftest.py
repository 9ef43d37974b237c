"""Fixtures for the storage tests: a real small filesystem to fill up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.small_disks import small_disk


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs): a full disk fails at COMMIT or in the WAL, not only at INSERT
    as SQLite's page limit does."""
    with small_disk(tmp_path / "small", "2m") as mount:
        yield mount
