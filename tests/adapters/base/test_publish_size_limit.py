"""The publisher against the real broker's packet limit (its CONNACK Maximum Packet Size): a reading that
fits to the byte is published, one byte more becomes a bad reading that says why, and the connection
is never dropped for it (mosquitto disconnects a client that sends a packet over its limit)."""

from __future__ import annotations

import asyncio
import json
import threading

from adapters.base.publisher import Publisher
from adapters.base.tag import Point, TagValue
from gateway.credentials import load_credentials
from gateway.mqtt import LocalMqtt, publish_overhead
from tests.fixtures.gateway import free_port, wait_until

GATEWAY = f"""
[gateway]
thing_name = "limit-gw"
status_interval_s = 0.5

[broker]
tls_port = {free_port()}
message_size_limit = 1024
"""


def reading_of_size(topic: str, size: int) -> TagValue:
    """A good reading whose payload is exactly `size` bytes."""
    empty = len(TagValue.good("", 1).payload())
    reading = TagValue.good("x" * (size - empty), 1)
    assert len(reading.payload()) == size
    return reading


def test_a_reading_that_fits_to_the_byte_is_published_and_one_byte_more_is_reported(gateway_factory) -> None:
    gw = gateway_factory(GATEWAY)
    received: dict[str, dict] = {}
    lock = threading.Lock()
    operator = gw.client("operator")

    def on_message(_client, _userdata, message) -> None:
        with lock:
            received[message.topic] = json.loads(message.payload)

    operator.on_message = on_message
    operator.subscribe("limit/#", qos=1)

    async def scenario() -> tuple[LocalMqtt, int]:
        stop = asyncio.Event()
        mqtt = LocalMqtt(gw.paths.broker_socket, load_credentials(gw.paths.credentials_dir, "operator"), "limit-test")
        runner = asyncio.create_task(mqtt.run(stop))
        while not mqtt.connected:
            await asyncio.sleep(0.02)
        limit = mqtt.max_packet_size or 0
        assert limit == 1024 + 65536  # what gateway/broker_config.py gives mosquitto, sent back in CONNACK
        publisher = Publisher("limit")
        sender = asyncio.create_task(publisher.run(mqtt))
        for name, extra in (("fits", 0), ("over", 1)):
            topic = f"limit/d/{name}"
            room = limit - publish_overhead(topic, limit, 1)
            publisher.offer(Point("d", name, topic), reading_of_size(topic, room + extra))
        publisher.offer(Point("d", "small", "limit/d/small"), TagValue.good(1, 1))
        await asyncio.to_thread(wait_until, lambda: len(received) == 3, 10, "three publications")
        sender.cancel()
        assert publisher.stats()["too_large"] == 1
        stop.set()
        await runner
        return mqtt, limit

    mqtt, limit = asyncio.run(scenario())
    assert mqtt._session_number == 1, "the connection was dropped and made again"
    assert received["limit/d/fits"]["quality"] == "good" and received["limit/d/small"]["value"] == 1
    over = received["limit/d/over"]
    assert over["quality"] == "bad" and over["value"] is None
    room = limit - publish_overhead("limit/d/over", limit, 1)
    assert over["reason"] == f"value of {room + 1} bytes is over the broker's limit of {room} bytes"
