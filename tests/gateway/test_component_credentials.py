"""A component whose secret file is damaged (its own user may write anything into it) stops with one
line naming the file, not a traceback; the next `millgate run` or deploy writes a new one
(tests/ops/test_deploy_recovery.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.component import component_credentials
from gateway.credentials import credential_path
from gateway.paths import GatewayPaths


@pytest.mark.parametrize("content", [b"not json", b'{"username": "core", "password": "x"}', b"[" * 100_000])
def test_a_damaged_secret_stops_the_component_with_the_file_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    paths = GatewayPaths.resolve(tmp_path / "etc", tmp_path / "state", None)
    paths.credentials_dir.mkdir(parents=True)
    secret = credential_path(paths.credentials_dir, "uplink")
    secret.write_bytes(content)
    with pytest.raises(SystemExit) as stopped:
        component_credentials(paths, "uplink")
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"uplink: cannot read its broker credentials: {secret}" in err and "Traceback" not in err
