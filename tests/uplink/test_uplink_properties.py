"""MQTT 5 message properties go through the spool to the cloud (issue 5: the spool keeps "topic,
payload, QoS, timestamp, properties"); over MQTT 3.1.1 they are dropped with one log line."""

from __future__ import annotations

import time
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from storage.spool import EXPIRED, MESSAGE_DEADLINE, Message, Rule, Spool
from tests.fixtures.gateway import wait_until
from tests.uplink.conftest import CloudBroker, local_publisher
from tests.uplink.test_uplink_drain import GATEWAY


def local_properties() -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.ContentType = "application/json"
    properties.PayloadFormatIndicator = 1
    properties.UserProperty = [("line", "1"), ("unit", "degC")]
    properties.ResponseTopic = "plant/replies/42"
    properties.CorrelationData = b"\x00\x01req"
    properties.MessageExpiryInterval = 3600
    return properties


def test_content_type_and_user_properties_published_locally_arrive_in_the_cloud(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    gw = uplink_gateway(GATEWAY + cloud_broker.toml())
    publisher = local_publisher(gw)
    publisher.publish("plant/line1/t", b'{"t": 21.5}', qos=1, properties=local_properties()).wait_for_publish(10)
    wait_until(lambda: len(cloud) >= 1, 15, "the message in the cloud")
    assert cloud.snapshot() == [("plant/line1/t", b'{"t": 21.5}')]
    got = cloud.properties[0]
    assert got is not None
    assert got.ContentType == "application/json"
    assert got.PayloadFormatIndicator == 1
    assert got.UserProperty == [("line", "1"), ("unit", "degC")]
    assert got.ResponseTopic == "plant/replies/42"
    assert got.CorrelationData == b"\x00\x01req"
    assert 0 < got.MessageExpiryInterval <= 3600, "what is left of the expiry, not the original number"


def test_over_mqtt_3_1_1_the_message_goes_without_its_properties_and_says_so_once(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    gw = uplink_gateway(GATEWAY + cloud_broker.toml(protocol="3.1.1"))
    publisher = local_publisher(gw)
    for i in range(3):
        publisher.publish("plant/line1/t", str(i).encode(), qos=1, properties=local_properties()).wait_for_publish(10)
    wait_until(lambda: len(cloud) >= 3, 15, "the messages in the cloud")
    assert cloud.snapshot() == [("plant/line1/t", str(i).encode()) for i in range(3)]
    assert all(not getattr(p, "UserProperty", None) for p in cloud.properties)
    log = gw.paths.component_log("uplink").read_text()
    assert log.count("event=cloud-properties-dropped protocol=3.1.1") == 1


def test_a_message_expiry_becomes_a_deadline_that_outlives_rule_changes(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, rules=[Rule("plant/", ttl_s=3600)])
    now = time.time()
    spool.append(
        [
            Message("plant/a", b"short", ts=now, properties={MESSAGE_DEADLINE: now + 10}),
            Message("plant/b", b"long", ts=now, properties={MESSAGE_DEADLINE: now + 7200}),
        ]
    )
    spool.close()
    spool = Spool(path, rules=[Rule("plant/", ttl_s=86400)])  # changed rules: the message's own deadline stays
    assert spool.expire(now + 11) == 1
    assert [m.payload for m in spool.next_batch({}, 10, now + 11)] == [b"long"]
    assert spool.expire(now + 7201) == 1, "the message's deadline is earlier than the new TTL"
    assert spool.stats().counters[EXPIRED] == 2
