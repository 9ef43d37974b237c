"""One real gateway for every shadow test in this package, and a shadow client on it (the operator
identity, which may use every $aws topic)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.gateway import MINIMAL_GATEWAY, RunningGateway, gateway_in
from tests.fixtures.shadows import ShadowClient


@pytest.fixture(scope="package")
def shadow_gateway() -> Iterator[RunningGateway]:
    root = Path(tempfile.mkdtemp(prefix="mgsh", dir="/tmp"))
    config = root / "etc"
    (config / "adapters").mkdir(parents=True)
    (config / "gateway.toml").write_text(MINIMAL_GATEWAY)
    with gateway_in(root) as gw:
        yield gw


@pytest.fixture(scope="package")
def shadows(shadow_gateway: RunningGateway) -> ShadowClient:
    return ShadowClient(shadow_gateway.client("operator"))
