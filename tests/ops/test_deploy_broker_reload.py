"""`millgate deploy` and what the broker must reload without a restart: a function's new login after
its run_as changed, a regenerated secret, and a server certificate re-issued for new names.
"""

from __future__ import annotations

import ssl
import time

import pytest

from gateway import ca as group_ca
from gateway.config_loader import load_config
from gateway.credentials import load_credentials
from tests.fixtures.gateway import RunningGateway, start_gateway, wait_until
from tests.fixtures.tls_devices import enrol, peer_certificate

GATEWAY = """
[gateway]
thing_name = "reload-gw"
status_interval_s = 0.5

[deployment]
health_timeout_s = 15
settle_s = 1.0

[[functions]]
name = "pinned"
code = "functions/pinned"
handler = "main.function_handler"
lifecycle = "long-lived"
run_as = "1001:1001"
"""
FILES = {"functions/pinned/main.py": "def function_handler(event, context):\n    return None\n"}
PROGRAMS = ("broker", "core", "fn-pinned")


def _online(gw: RunningGateway, component: str) -> bool:
    """A fresh heartbeat (not a retained one from before) from the process supervisord runs now."""
    status = gw.status()
    beat = status["components"].get(component, {})
    running = status["processes"].get(component, {})
    return (
        beat.get("pid") == running.get("pid")
        and time.time() - beat.get("ts", 0) < 2
        and beat.get("state") == "online"
        and beat.get("function_state") == "ready"
    )


def _start(gateway_factory) -> RunningGateway:
    gw = gateway_factory(GATEWAY, files=FILES, expect=PROGRAMS)
    wait_until(lambda: _online(gw, "fn-pinned"), 15, "fn-pinned online")
    return gw


def test_deploy_changing_a_long_lived_functions_run_as_reloads_its_new_login(gateway_factory) -> None:
    gw = _start(gateway_factory)
    broker_pid = gw.status()["processes"]["broker"]["pid"]
    toml = gw.config_dir / "gateway.toml"
    toml.write_text(toml.read_text().replace('run_as = "1001:1001"', 'run_as = "1004:1004"'))
    # new code as well: an unchanged version's directory stays the old uid's (gateway/function_deploy.py)
    (gw.config_dir / "functions/pinned/main.py").write_text(FILES["functions/pinned/main.py"] + "# v2\n")
    result = gw.cli("deploy", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout and "broker reloaded" in result.stdout, result.stdout
    assert (gw.paths.credentials_dir / "function.pinned.json").stat().st_uid == 1004
    wait_until(lambda: _online(gw, "fn-pinned"), 10, "fn-pinned online under its new uid")
    assert gw.status()["processes"]["broker"]["pid"] == broker_pid


def test_deploy_adding_a_broker_hostname_serves_the_new_certificate_without_a_broker_restart(
    gateway_factory, short_tmp
) -> None:
    gw = _start(gateway_factory)
    broker_pid = gw.status()["processes"]["broker"]["pid"]
    port = load_config(gw.config_dir).gateway.broker.tls_port
    device = enrol(gw.paths, "press-01", short_tmp / "dev")
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_certificate(port, device, host="gw2.plant.example")
    toml = gw.config_dir / "gateway.toml"
    toml.write_text(toml.read_text().replace("[broker]\n", '[broker]\nhostnames = ["gw2.plant.example"]\n'))
    result = gw.cli("deploy", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broker reloaded" in result.stdout, result.stdout
    served = peer_certificate(port, device, host="gw2.plant.example")  # verified for the new name
    assert served.serial_number == group_ca.load_server_cert(gw.paths).serial_number  # type: ignore[union-attr]
    assert gw.status()["processes"]["broker"]["pid"] == broker_pid


def test_a_secret_file_its_function_filled_with_garbage_is_written_anew(gateway_factory) -> None:
    gw = _start(gateway_factory)
    secret = gw.paths.credentials_dir / "function.pinned.json"
    secret.write_text("garbage, as the function itself may write")
    result = gw.cli("deploy", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "restarted: fn-pinned" in result.stdout, result.stdout  # it read the old secret at start
    assert load_credentials(gw.paths.credentials_dir, "function.pinned").username == "function.pinned"
    assert secret.stat().st_uid == 1001 and secret.stat().st_mode & 0o777 == 0o600
    wait_until(lambda: _online(gw, "fn-pinned"), 10, "fn-pinned online after the deployment")
    time.sleep(2)  # and staying so: the reloaded broker did not refuse its login
    assert _online(gw, "fn-pinned")

    # and `millgate run` starts on one, rather than crash-looping under systemd
    gw.stop()
    secret.write_text('{"username": "core", "password": "chosen-by-the-function"}')
    again = start_gateway(gw.config_dir, gw.state_dir, expect=PROGRAMS)
    try:
        wait_until(lambda: _online(again, "fn-pinned"), 15, "fn-pinned online after the restart")
        assert load_credentials(gw.paths.credentials_dir, "function.pinned").password != "chosen-by-the-function"
        assert "event=credentials-regenerated identity=function.pinned" in again.output.read_text()
    finally:
        again.stop()
        again.kill_leftovers()
