"""`millgate device add|revoke` rewrite the broker's ACL from the config the gateway runs (the current
deployment), not from --config: after `millgate deploy --config X` they keep X's routes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.fixtures.gateway import run_cli
from tests.fixtures.tls_devices import DeviceClient, DeviceFiles, free_port


def gateway_toml(tls_port: int, topic: str) -> str:
    return f"""
[gateway]
thing_name = "acl-gw"
status_interval_s = 0.5

[broker]
tls_port = {tls_port}

[discovery]
port = {free_port()}

[[functions]]
name = "sink"
code = "functions/sink"
handler = "main.function_handler"
run_as = "1001:1001"

[[subscriptions]]
source = "device:press-01"
target = "function:sink"
topic = "{topic}"
"""


FILES = {"functions/sink/main.py": "def function_handler(event, context):\n    return None\n"}


def _enrol(gw, thing: str, out: Path) -> DeviceFiles:  # type: ignore[no-untyped-def]
    result = gw.cli("device", "add", thing, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return DeviceFiles(thing, out / f"{thing}.cert.pem", out / f"{thing}.key.pem", out / "group-ca.pem")


def test_device_add_and_revoke_keep_the_routes_of_the_deployed_config(gateway_factory, short_tmp: Path) -> None:
    port = free_port()
    gw = gateway_factory(gateway_toml(port, "old/telemetry"), files=FILES)
    deployed = short_tmp / "deployed"
    shutil.copytree(gw.config_dir, deployed)
    (deployed / "gateway.toml").write_text(gateway_toml(port, "new/telemetry"))
    result = run_cli("deploy", config=deployed, state=gw.state_dir, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr

    # the operator's --config (gw.config_dir) still holds the old route
    device = DeviceClient(port, _enrol(gw, "press-01", short_tmp / "press-01")).connect()
    try:
        assert device.publish_reason("new/telemetry") == "Success"
        assert device.publish_reason("old/telemetry") == "Not authorized"
        _enrol(gw, "press-02", short_tmp / "press-02")
        revoked = gw.cli("device", "revoke", "press-02")
        assert revoked.returncode == 0, revoked.stderr
        assert device.publish_reason("new/telemetry") == "Success"
        assert device.publish_reason("old/telemetry") == "Not authorized"
    finally:
        device.close()
