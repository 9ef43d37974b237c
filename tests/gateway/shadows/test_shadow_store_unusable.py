"""The core on a shadows.db it cannot use: one clear log line naming the file, exit 3 (the uplink's
storage exit code, which supervisord treats as final), and the file left as it was."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from gateway.status import supervisor_proxy
from tests.fixtures.gateway import REPO, RunningGateway


def test_a_garbage_shadow_store_stops_the_core_with_the_path_and_exit_3(
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    gw = gateway_factory()
    supervisor_proxy(gw.paths).supervisor.stopProcess("core")
    store = gw.state_dir / "shadows.db"
    garbage = b"not a database at all" * 200
    store.write_bytes(garbage)
    for leftover in (gw.state_dir / "shadows.db-wal", gw.state_dir / "shadows.db-shm"):
        leftover.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.core", "--config", str(gw.config_dir), "--state", str(gw.state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if "event=shadow-store-unusable" in line]
    assert len(errors) == 1, result.stdout
    assert str(store) in errors[0] and "move the file aside" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert store.read_bytes() == garbage
