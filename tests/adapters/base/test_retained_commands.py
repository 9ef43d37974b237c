"""Retained commands against the real broker: a command router never writes one, and the adapters'
command subscriptions (MQTT 5 Retain Handling 2) never get one handed over on a reconnect."""

from __future__ import annotations

import asyncio
import json
import threading

from adapters.base.commands import RETAINED_REFUSAL, CommandRouter, command_subscriptions
from adapters.base.tag import Point
from gateway.credentials import load_credentials
from gateway.mqtt import LocalMqtt, Received
from tests.fixtures.gateway import RunningGateway, wait_until

SET = "line1/press/valve/set"


class RecordingWriter:
    """The protocol side of the router: records what it is asked to write."""

    def __init__(self) -> None:
        self.writes: list[object] = []

    def submit_write(self, point: Point, value: object) -> asyncio.Future:
        self.writes.append(value)
        future = asyncio.get_running_loop().create_future()
        future.set_result(value)
        return future


async def connect_once(
    gw: RunningGateway, router: CommandRouter, subscriptions: list, delivered: list[Received]
) -> None:
    """One adapter connection: connect, subscribe, take whatever the broker hands over, disconnect."""

    async def on_message(received: Received) -> None:
        delivered.append(received)
        await router.handle(received)

    stop = asyncio.Event()
    mqtt = LocalMqtt(
        gw.paths.broker_socket,
        load_credentials(gw.paths.credentials_dir, "operator"),
        "retain-test",
        subscriptions=subscriptions,
        on_message=on_message,
    )
    router.broker = mqtt
    runner = asyncio.create_task(mqtt.run(stop))
    while not mqtt.connected:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # retained messages follow the SUBACK at once
    stop.set()
    await runner


def test_a_retained_command_is_never_written_on_any_reconnect(gateway_factory) -> None:
    gw = gateway_factory()
    results: list[dict] = []
    lock = threading.Lock()
    operator = gw.client("operator")

    def on_result(_client, _userdata, message) -> None:
        with lock:
            results.append(json.loads(message.payload))

    operator.on_message = on_result
    operator.subscribe(SET + "/result", qos=1)
    operator.publish(SET, json.dumps({"value": True, "id": "r7"}), qos=1, retain=True).wait_for_publish(5)

    writer = RecordingWriter()
    router = CommandRouter("line1", [Point("press", "valve", "line1/press/valve", writable=True)], writer)
    plain: list[Received] = []
    handled: list[Received] = []

    async def scenario() -> None:
        # a subscription without Retain Handling (what a broker that ignores it does): the router refuses
        await connect_once(gw, router, [(f, 1) for f in router.filters()], plain)
        for _ in range(3):  # the adapters' own subscriptions: the broker does not hand it over at all
            await connect_once(gw, router, command_subscriptions(router.filters()), handled)

    try:
        asyncio.run(scenario())
        wait_until(lambda: results, 5, "the refusal")
        assert [m.retain for m in plain] == [True]
        assert handled == []
        assert writer.writes == []
        assert results == [{"ok": False, "error": RETAINED_REFUSAL, "id": "r7", "ts": results[0]["ts"]}]
    finally:
        operator.publish(SET, b"", qos=1, retain=True).wait_for_publish(5)
