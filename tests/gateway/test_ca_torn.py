"""The group CA's files after a crash tore a write in two: a server key without its certificate, a
CRL from another CA generation, a CA key without its certificate. The broker must still start and
accept devices; a CA that cannot sign is refused with what to do, never silently replaced.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import ca as group_ca
from gateway.atomic_file import write_atomic
from gateway.config_loader import load_config
from gateway.launch import prepare
from gateway.paths import GatewayPaths
from tests.fixtures.gateway import REPO, run_cli, start_gateway, wait_until
from tests.fixtures.tls_devices import enrol, tls_outcome
from tests.gateway.test_ca import write_config


@pytest.fixture
def prepared(short_tmp: Path) -> GatewayPaths:
    config = write_config(short_tmp / "etc")
    toml = config / "gateway.toml"
    toml.write_text(toml.read_text().replace("server_cert_days = 3", "server_cert_days = 3\nserver_cert_check_s = 0.3"))
    paths = GatewayPaths.resolve(config, short_tmp / "s", None)
    prepare(load_config(config), paths)
    return paths


def _tls_port(paths: GatewayPaths) -> int:
    return load_config(paths.config_dir).gateway.broker.tls_port


def _server_pair_matches(paths: GatewayPaths) -> bool:
    cert = group_ca.load_server_cert(paths)
    return (
        cert is not None
        and group_ca.server_cert_renewal_reason(
            paths, group_ca.load_ca(paths), load_config(paths.config_dir).gateway, group_ca.now_utc()
        )
        is None
    )


def _new_key_pem() -> bytes:
    return group_ca.key_pem(group_ca.self_signed("unused", days=1)[1])


def _tear_server_key(paths: GatewayPaths) -> None:
    """issue_server_cert stopped after writing the new key, before its certificate."""
    write_atomic(paths.server_key, _new_key_pem(), group_ca.KEY_MODE)


def _foreign_crl(paths: GatewayPaths) -> None:
    """The CRL of another CA generation (a rotation stopped before signing the new one)."""
    cert, key = group_ca.self_signed("another CA", days=30, ca=True)
    group_ca.write_crl(paths, group_ca.GroupCa(cert, key), None)


@pytest.mark.parametrize("tear", [_tear_server_key, _foreign_crl], ids=["server-key", "crl"])
def test_broker_starts_and_accepts_devices_after_a_torn_write(prepared: GatewayPaths, short_tmp: Path, tear) -> None:
    device = enrol(prepared, "press-01", short_tmp / "dev")
    tear(prepared)
    gw = start_gateway(prepared.config_dir, prepared.state_dir)
    try:
        assert _server_pair_matches(prepared)
        assert group_ca.crl_problem(prepared, group_ca.load_ca(prepared)) is None
        port = _tls_port(prepared)
        wait_until(lambda: tls_outcome(port, device, device.ca) == "accepted", 10, "the device to be accepted")
        assert gw.status()["processes"]["broker"]["state"] == "RUNNING"
    finally:
        gw.stop()
        gw.kill_leftovers()


def test_the_core_repairs_a_server_key_torn_while_running(prepared: GatewayPaths, short_tmp: Path) -> None:
    device = enrol(prepared, "press-01", short_tmp / "dev")
    gw = start_gateway(prepared.config_dir, prepared.state_dir)
    try:
        _tear_server_key(prepared)
        wait_until(lambda: _server_pair_matches(prepared), 10, "the core to re-issue the server certificate")
        port = _tls_port(prepared)
        wait_until(lambda: tls_outcome(port, device, device.ca) == "accepted", 10, "the device to be accepted")
        assert "key is not the certificate's" in gw.paths.component_log("core").read_text()
    finally:
        gw.stop()
        gw.kill_leftovers()


def test_a_ca_key_torn_from_its_certificate_is_refused_with_what_to_do(prepared: GatewayPaths, short_tmp: Path) -> None:
    ca_pem = prepared.ca_cert.read_bytes()
    torn_key = _new_key_pem()  # rotate_ca stopped after writing the new key
    write_atomic(prepared.ca_key, torn_key, group_ca.KEY_MODE)

    run = _run_refused(prepared)
    assert f"{prepared.ca_key} is not the key of {prepared.ca_cert}" in run
    assert "millgate ca rotate --reissue-devices" in run and "backup" in run
    assert prepared.ca_cert.read_bytes() == ca_pem and prepared.ca_key.read_bytes() == torn_key  # left as found

    added = _cli(prepared, "device", "add", "press-01", "--out", str(short_tmp / "dev"))
    assert added.returncode == 2 and "is not the key of" in added.stderr
    assert not (short_tmp / "dev").exists()

    rotated = _cli(prepared, "ca", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    gw = start_gateway(prepared.config_dir, prepared.state_dir)
    try:
        device = enrol(prepared, "press-01", short_tmp / "dev")
        port = _tls_port(prepared)
        wait_until(lambda: tls_outcome(port, device, device.ca) == "accepted", 10, "the device to be accepted")
    finally:
        gw.stop()
        gw.kill_leftovers()


def test_a_first_start_torn_after_the_ca_key_makes_the_ca_again(short_tmp: Path) -> None:
    config = write_config(short_tmp / "etc")
    paths = GatewayPaths.resolve(config, short_tmp / "s", None)
    group_ca.ensure_ca_dir(paths, None)
    write_atomic(paths.ca_key, _new_key_pem(), group_ca.KEY_MODE)
    prepare(load_config(config), paths)
    ca = group_ca.load_ca(paths)
    assert group_ca.key_matches(ca.key, ca.cert)
    assert _server_pair_matches(paths)


def _cli(paths: GatewayPaths, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, config=paths.config_dir, state=paths.state_dir)


def _run_refused(paths: GatewayPaths) -> str:
    """`millgate run`'s complaint; a gateway it started anyway is stopped with all it started."""
    argv = [
        str(Path(sys.executable).parent / "millgate"),
        "run",
        "--config",
        str(paths.config_dir),
        "--state",
        str(paths.state_dir),
    ]
    run = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO)
    try:
        _, stderr = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGTERM)
        run.communicate(timeout=30)
        raise AssertionError("millgate run started the gateway on a CA that cannot sign") from None
    assert run.returncode == 1, stderr
    return stderr
