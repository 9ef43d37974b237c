"""The real greengrasssdk 1.6.1 from PyPI, downloaded once per session, for packaging v1 functions."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SDK = "greengrasssdk==1.6.1"


@pytest.fixture(scope="session")
def greengrasssdk_dir() -> Iterator[Path]:
    """A directory holding the `greengrasssdk` package exactly as the PyPI wheel ships it."""
    with tempfile.TemporaryDirectory(prefix="ggsdk") as tmp:
        root = Path(tmp)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", SDK, "--no-deps", "--only-binary", ":all:", "-d", str(root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            pytest.fail(f"pip download {SDK} failed (is PyPI reachable?):\n{result.stderr}")
        wheel = next(root.glob("greengrasssdk-1.6.1-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root / "sdk")
        assert (root / "sdk" / "greengrasssdk" / "__init__.py").read_text().count("__version__ = '1.6.1'")
        yield root / "sdk"
