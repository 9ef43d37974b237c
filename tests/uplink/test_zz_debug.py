import json, time
from tests.uplink.test_shadow_sync_e2e import *  # noqa
from tests.uplink.test_uplink_drain import uplink_status


def test_debug(uplink_gateway, cloud_broker, cloud_shadows):
    spy = cloud_broker.subscriber("$aws/#", client_id="spy")
    raw = uplink_gateway(gateway_toml(cloud_broker.toml()))
    gw = Gateway(raw)
    eventually(gw.link_connected, "link")
    time.sleep(2)
    print("CLOUD", spy.snapshot())
    print("STATUS", uplink_status(raw).get("shadow_relay"))
    print(
        open(raw.paths.state_dir / "mosquitto.conf").read() if (raw.paths.state_dir / "mosquitto.conf").exists() else ""
    )
    import subprocess

    print(
        subprocess.run(
            f"find {raw.paths.state_dir} -name '*acl*' | xargs cat", shell=True, capture_output=True, text=True
        ).stdout
    )
    assert 0
