"""The uplink inside a real gateway: cloud-bound messages spooled before the local PUBACK and
drained to a TLS 'cloud' mosquitto in order, through outages, refusals and priorities."""

from __future__ import annotations

import json

from tests.fixtures.gateway import RunningGateway, wait_until
from tests.uplink.conftest import CloudBroker, local_publisher, publish_many

GATEWAY = """
[gateway]
thing_name = "test-gw"
status_interval_s = 0.5

[[subscriptions]]
source = "shadow"
target = "cloud"
topic = "plant/#"
"""


def uplink_status(gw: RunningGateway) -> dict:
    """The uplink's latest heartbeat on the local broker (retained, refreshed every 0.5 s)."""
    watcher = getattr(gw, "_uplink_watcher", None)
    if watcher is None:
        got: list[dict] = []
        client = gw.client("operator")
        client.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
        client.subscribe("millgate/uplink/status", qos=1)
        wait_until(lambda: got, 5, "the uplink's status")
        watcher = gw._uplink_watcher = got  # type: ignore[attr-defined]
    return watcher[-1]


def test_shadow_messages_reach_the_cloud_in_order_over_tls(uplink_gateway, cloud_broker: CloudBroker) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    gw = uplink_gateway(GATEWAY + cloud_broker.toml())
    wait_until(lambda: uplink_status(gw).get("cloud", {}).get("connected"), 10, "the cloud link")
    core = local_publisher(gw)
    sent = [(f"plant/line{i % 2}/t", str(i).encode()) for i in range(500)]
    publish_many(core, sent)
    wait_until(lambda: len(cloud) >= 500, 20, "500 messages in the cloud")
    assert cloud.snapshot() == sent
    wait_until(lambda: uplink_status(gw)["spool"]["messages"] == 0, 5, "an empty spool")


def test_poison_message_goes_to_dead_letters_without_blocking_its_topic(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.deny = ("plant/poison",)
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    gw = uplink_gateway(GATEWAY + cloud_broker.toml(dead_letter_after=2))
    core = local_publisher(gw)
    publish_many(core, [("plant/a", b"1"), ("plant/poison", b"bad"), ("plant/a", b"2"), ("plant/big", b"x" * 200_000)])
    wait_until(lambda: len(cloud) >= 2, 15, "the healthy messages")
    wait_until(lambda: uplink_status(gw)["spool"]["dead_letters"] == 2, 20, "two dead letters", interval_s=0.2)
    assert cloud.snapshot() == [("plant/a", b"1"), ("plant/a", b"2")]
    counters = uplink_status(gw)["spool"]["counters"]
    assert counters["dead.refused"] == 1 and counters["dead.payload-too-large"] == 1
