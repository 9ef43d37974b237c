"""The inbox of a lossless (manual_ack) consumer is bounded by bytes: when the handler falls behind,
paho's reader waits, the socket pushes back, and the broker keeps what does not fit; nothing is lost.

mosquitto 2.0.11 does not hold QoS 1 deliveries to a client's Receive Maximum once acknowledgements
interleave, so without this the inbox of a stalled uplink grew without bound.
"""

from __future__ import annotations

import asyncio
import threading

from gateway.credentials import load_credentials
from gateway.mqtt import LocalMqtt, Received
from tests.fixtures.gateway import RunningGateway

MESSAGES = 1500
PAYLOAD = 8 * 1024
CAP = 256 * 1024


def _flood(gw: RunningGateway) -> None:
    publisher = gw.client("operator")
    for index in range(MESSAGES):
        publisher.publish("flood/x", index.to_bytes(4, "big") + b"\0" * (PAYLOAD - 4), qos=1).wait_for_publish(10)


def test_a_slow_lossless_consumer_holds_at_most_its_byte_cap_and_loses_nothing(gateway_factory) -> None:
    gw = gateway_factory()
    creds = load_credentials(gw.paths.credentials_dir, "operator")
    seen: list[int] = []
    peak = 0

    async def consume() -> LocalMqtt:
        nonlocal peak
        stop = asyncio.Event()
        consumer: LocalMqtt

        async def handle(message: Received) -> None:
            nonlocal peak
            peak = max(peak, consumer._held_bytes)
            await asyncio.sleep(0.002)  # a handler slower than the broker can send
            seen.append(int.from_bytes(message.payload[:4], "big"))
            consumer.ack(message)
            if len(set(seen)) == MESSAGES:
                stop.set()

        consumer = LocalMqtt(
            gw.paths.broker_socket,
            creds,
            "inbox-test",
            subscriptions=[("flood/#", 1)],
            on_message=handle,
            inbox_max_bytes=CAP,
            manual_ack=True,
            persistent_session=True,
        )
        runner = asyncio.create_task(consumer.run(stop))
        while not consumer.connected:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # subscribed
        flood = threading.Thread(target=_flood, args=(gw,))
        flood.start()
        async with asyncio.timeout(60):
            await runner
        flood.join(10)
        return consumer

    consumer = asyncio.run(consume())
    assert sorted(set(seen)) == list(range(MESSAGES))
    assert consumer.reader_pauses > 0, "the flood never filled the inbox: the test proves nothing"
    assert peak <= CAP + PAYLOAD, f"held {peak} bytes against a cap of {CAP}"
