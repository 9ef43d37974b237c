"""A poison message the cloud answers by hanging up (MQTT 3.1.1 has no PUBACK reason codes; AWS IoT
disconnects on an unauthorized publish) goes to the dead letters after `dead_letter_after` drops
instead of being resent first after every reconnect (issue 5: "a message the cloud keeps refusing
goes to the dead-letter table after N tries instead of blocking"); ordinary outages bury nothing."""

from __future__ import annotations

import json
import time

from tests.fixtures.gateway import wait_until
from tests.uplink.conftest import CloudBroker, HangUpProxy, LinkProxy, local_publisher, publish_many
from tests.uplink.test_uplink_drain import GATEWAY, uplink_status


def test_a_message_the_cloud_hangs_up_on_is_dead_lettered_and_the_rest_flows(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    proxy = HangUpProxy(cloud_broker, b"POISON")
    try:
        gw = uplink_gateway(GATEWAY + cloud_broker.toml(port=proxy.port, protocol="3.1.1", dead_letter_after=3))
        healthy = [(f"plant/line{i % 2}/t", str(i).encode()) for i in range(40)]
        publish_many(local_publisher(gw), [*healthy[:10], ("plant/line0/t", b"POISON"), *healthy[10:]])
        wait_until(lambda: uplink_status(gw)["spool"]["dead_letters"] == 1, 30, "the poison buried", interval_s=0.2)
        wait_until(lambda: set(cloud.snapshot()) == set(healthy), 20, "every healthy message in the cloud")
        wait_until(lambda: uplink_status(gw)["spool"]["messages"] == 0, 10, "an empty spool", interval_s=0.2)
        assert proxy.hang_ups == 3, "buried after dead_letter_after drops, never sent again"
    finally:
        proxy.close()
    got = cloud.snapshot()
    line0 = [p for t, p in dict.fromkeys(got) if t == "plant/line0/t"]
    assert line0 == [p for t, p in healthy if t == "plant/line0/t"], "the poison's topic kept its order"
    status = uplink_status(gw)["spool"]
    assert status["counters"]["dead.link-dropped"] == 1
    assert "dead.refused" not in status["counters"]
    exported = gw.cli("spool", "export", "-", "--dead-letters")
    (letter,) = [json.loads(line) for line in exported.stdout.splitlines()]
    assert letter["payload"] == "POISON" and "link dropped while in flight" in letter["reason"]


def test_ordinary_outages_while_draining_bury_nothing(
    uplink_gateway, cloud_broker: CloudBroker, link_proxy: LinkProxy
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    gw = uplink_gateway(GATEWAY + cloud_broker.toml(port=link_proxy.port, dead_letter_after=2))
    # a backlog the six cuts cannot drain: a fast machine sends ~1,000 messages between the cloud
    # seeing the 200th of a connection and the cut (a smaller backlog ran dry before the last cut)
    sent = [(f"plant/line{i % 4}/t", str(i).encode()) for i in range(15_000)]
    publish_many(local_publisher(gw), sent)
    wait_until(lambda: uplink_status(gw)["spool"]["messages"] == len(sent), 60, "the backlog spooled")
    for cut in range(6):  # three times dead_letter_after: cut with publishes in flight, each time
        assert uplink_status(gw)["spool"]["messages"] > 0, f"the backlog ran dry before cut {cut + 1}"
        link_proxy.up()
        before = len(cloud)
        wait_until(lambda before=before: len(cloud) >= before + 200, 20, "the backlog draining", interval_s=0.01)
        link_proxy.down()
        time.sleep(0.3)
    link_proxy.up()
    wait_until(lambda: set(cloud.snapshot()) == set(sent), 60, "every message in the cloud", interval_s=0.2)
    wait_until(lambda: uplink_status(gw)["spool"]["messages"] == 0, 10, "an empty spool", interval_s=0.2)
    assert uplink_status(gw)["spool"]["dead_letters"] == 0
    log = gw.paths.component_log("uplink").read_text()
    assert "event=cloud-link-dropped-in-flight" in log, "the cuts did hit publishes in flight"
