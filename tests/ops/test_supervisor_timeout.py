"""A supervisord that accepts on its socket and never answers (stuck, not stopped): `millgate status`
and `millgate deploy` give up after SUPERVISOR_TIMEOUT_S and say so, instead of waiting for ever (deploy
while holding the deployment store's lock).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.status import SUPERVISOR_TIMEOUT_S
from tests.fixtures.gateway import run_cli


class SilentSocket:
    """A unix socket that accepts every connection, reads what comes and never answers."""

    def __init__(self, path: Path):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def stuck(short_tmp: Path) -> Iterator[tuple[Path, Path, SilentSocket]]:
    config, state = short_tmp / "etc", short_tmp / "s"
    config.mkdir()
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n')
    (state / "run").mkdir(parents=True)
    silent = SilentSocket(state / "run" / "supervisor.sock")
    yield config, state, silent
    silent.close()


def test_status_says_supervisord_did_not_answer_instead_of_hanging(stuck) -> None:
    config, state, silent = stuck
    started = time.monotonic()
    result = run_cli("status", config=config, state=state, timeout=60)
    took = time.monotonic() - started
    assert silent.accepted, "status never reached the socket"
    assert result.returncode == 1
    sock = state / "run" / "supervisor.sock"
    assert result.stdout.splitlines()[0] == f"supervisord at {sock} did not answer within {SUPERVISOR_TIMEOUT_S:g} s"
    assert SUPERVISOR_TIMEOUT_S <= took < SUPERVISOR_TIMEOUT_S + 15


def test_deploy_fails_without_staging_instead_of_hanging_on_a_stuck_supervisord(stuck) -> None:
    config, state, silent = stuck
    started = time.monotonic()
    result = run_cli("deploy", config=config, state=state, timeout=60)
    took = time.monotonic() - started
    assert silent.accepted, "deploy never reached the socket"
    assert result.returncode != 0
    assert "failed" in result.stderr.splitlines()[0], result.stderr
    assert f"did not answer within {SUPERVISOR_TIMEOUT_S:g} s" in result.stderr
    assert took < SUPERVISOR_TIMEOUT_S + 15
    history = run_cli("deploy", "--history", config=config, state=state)
    assert "failed" in history.stdout and "staged" not in history.stdout, history.stdout


def test_a_supervisord_stuck_while_a_deployment_applies_fails_it_instead_of_staging_it(stuck) -> None:
    # supervisord answered that it runs, then got stuck: the change must fail (and roll back), not be
    # taken for a gateway that is not running and recorded as staged for its next start
    from gateway.broker_reload import BrokerReloadFailed, reload_broker
    from gateway.deploy_apply import ApplyFailed, apply_rendered
    from gateway.paths import GatewayPaths

    config, state, _silent = stuck
    paths = GatewayPaths.resolve(config, state, None)
    with pytest.raises(ApplyFailed, match="did not answer"):
        apply_rendered(paths, access_changed=True)
    with pytest.raises(BrokerReloadFailed, match="did not answer"):
        reload_broker(paths)
