"""No echo loop between the uplink's two directions: with `line1/#` going to the cloud and
`line1/+/+/set` coming from it, a cloud command republished locally is not spooled and sent back up,
and (over MQTT 5) what the uplink sends up is not sent back down. ../shared/greengrass-v1-contract.md:
subscriptions route a message from its source to its target, not back to where it came from."""

from __future__ import annotations

import time

from tests.fixtures.gateway import wait_until
from tests.uplink.conftest import CloudBroker
from tests.uplink.test_uplink_drain import uplink_status

ROUTES = """
[gateway]
thing_name = "test-gw"
status_interval_s = 0.5

[[subscriptions]]
source = "shadow"
target = "cloud"
topic = "line1/#"

[[subscriptions]]
source = "cloud"
target = "shadow"
topic = "line1/+/+/set"
"""
SETTLE_S = 2.0  # long enough for a loop to go round many times (each lap is a few milliseconds)


def local_watcher(gw) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    core = gw.client("core")
    core.on_message = lambda _c, _u, m: got.append((m.topic, m.payload))
    core.subscribe("line1/#", qos=1)
    return got


def test_a_cloud_command_is_delivered_locally_once_and_never_sent_back_up(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("line1/#")
    gw = uplink_gateway(ROUTES + cloud_broker.toml())
    local = local_watcher(gw)
    wait_until(lambda: uplink_status(gw).get("cloud", {}).get("connected"), 10, "the cloud link")
    assert cloud.client is not None
    cloud.client.publish("line1/press/speed/set", b"100", qos=1)
    wait_until(lambda: local, 10, "the command on the local broker")
    time.sleep(SETTLE_S)
    assert local == [("line1/press/speed/set", b"100")]
    assert cloud.snapshot() == [("line1/press/speed/set", b"100")], "only the command itself, no echo"
    status = uplink_status(gw)
    assert status["drained_total"] == 0 and status["spool"]["messages"] == 0


def test_a_local_command_goes_up_once_and_does_not_come_back_down(uplink_gateway, cloud_broker: CloudBroker) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("line1/#")
    gw = uplink_gateway(ROUTES + cloud_broker.toml())
    local = local_watcher(gw)
    wait_until(lambda: uplink_status(gw).get("cloud", {}).get("connected"), 10, "the cloud link")
    gw.client("core").publish("line1/press/speed/set", b"200", qos=1).wait_for_publish(10)
    wait_until(lambda: cloud.snapshot(), 10, "the command in the cloud")
    time.sleep(SETTLE_S)
    assert cloud.snapshot() == [("line1/press/speed/set", b"200")]
    assert local == [("line1/press/speed/set", b"200")], "the cloud (MQTT 5, noLocal) did not send it back"
    assert uplink_status(gw)["downlinked_total"] == 0


def test_over_mqtt_3_1_1_the_cloud_echo_is_republished_once_and_the_overlap_is_logged(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("line1/#")
    gw = uplink_gateway(ROUTES + cloud_broker.toml(protocol="3.1.1"))
    local = local_watcher(gw)
    wait_until(lambda: uplink_status(gw).get("cloud", {}).get("connected"), 10, "the cloud link")
    gw.client("core").publish("line1/press/speed/set", b"300", qos=1).wait_for_publish(10)
    wait_until(lambda: len(local) >= 2, 10, "the cloud's echo on the local broker")
    time.sleep(SETTLE_S)
    assert cloud.snapshot() == [("line1/press/speed/set", b"300")], "sent up once: no loop"
    assert local == [("line1/press/speed/set", b"300")] * 2, "the original and one echo (3.1.1 has no noLocal)"
    log = gw.paths.component_log("uplink").read_text()
    assert "event=cloud-echo-possible protocol=3.1.1 overlapping=line1/#~line1/+/+/set" in log
