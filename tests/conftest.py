"""Shared fixtures: short temp dirs (unix socket paths are limited to 107 bytes) and whole gateways
started with `millgate run` (real supervisord, real mosquitto), always stopped afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.gateway import MINIMAL_GATEWAY, RunningGateway, run_cli, start_gateway, wait_until

__all__ = ["RunningGateway", "run_cli", "start_gateway", "wait_until"]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mg", dir="/tmp"))
    path.chmod(0o755)  # function workers run under their own uids and must reach the state dir
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gateway_factory(short_tmp: Path) -> Iterator[Callable[..., RunningGateway]]:
    """Write a config dir and start a gateway on it: factory(gateway_toml, adapters={name: toml}, files={})."""
    started: list[RunningGateway] = []

    def factory(
        gateway_toml: str = MINIMAL_GATEWAY,
        adapters: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
        expect: tuple[str, ...] = ("broker", "core"),
    ) -> RunningGateway:
        index = len(started)
        config = short_tmp / f"etc{index}"
        (config / "adapters").mkdir(parents=True)
        (config / "gateway.toml").write_text(gateway_toml)
        for name, text in (adapters or {}).items():
            (config / "adapters" / f"{name}.toml").write_text(text)
        for relative, text in (files or {}).items():
            (config / relative).parent.mkdir(parents=True, exist_ok=True)
            (config / relative).write_text(text)
        gw = start_gateway(config, short_tmp / f"s{index}", expect)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()
        gw.kill_leftovers()
