"""Fixtures for the operations tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def dirs(short_tmp: Path) -> tuple[Path, Path]:
    """A config dir with the smallest valid gateway.toml, and a state dir not made yet, for a
    `millgate` verb run with no gateway running."""
    config, state = short_tmp / "etc", short_tmp / "var"
    config.mkdir()
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    return config, state
