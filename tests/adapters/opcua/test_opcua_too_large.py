"""A value or event larger than the broker takes (its CONNACK Maximum Packet Size) is never sent: sent,
mosquitto dropped the adapter's connection, the publisher put the value back and sent it again after
every reconnect, and no other tag went out. Now the value is published as a bad reading that says why,
the event is dropped and counted, and everything else keeps flowing; as the operator sees it."""

from __future__ import annotations

import asyncio
import json
import threading

from asyncua import Client, ua

from tests.fixtures.gateway import free_port, wait_until

BIG = 100_000  # bytes of text: over the broker's packet limit below (1 KiB + mosquitto's 64 KiB headroom)


def gateway() -> str:
    return f"""
[gateway]
thing_name = "opcua-gw"
status_interval_s = 0.5

[broker]
tls_port = {free_port()}
message_size_limit = 1024
"""


def adapter(endpoint: str) -> str:
    return f"""
name = "line2"
protocol = "opcua"
endpoint = "{endpoint}"

[[nodes]]
name = "temperature"
node_id = "ns=2;s=Line2.Temperature"
sampling_ms = 50

[[nodes]]
name = "mode"
node_id = "ns=2;s=Line2.Mode"
sampling_ms = 50

[[events]]
name = "alarms"
node_id = "ns=2;s=Line2"
event_type = "ns=2;s=Line2AlarmType"
fields = ["Severity", "Message"]
"""


async def on_server(endpoint: str, mode: str | None = None, alarm: str | None = None) -> None:
    async with Client(endpoint) as client:
        if mode is not None:
            await client.get_node("ns=2;s=Line2.Mode").write_value(ua.Variant(mode, ua.VariantType.String))
        if alarm is not None:
            line = client.get_node("ns=2;s=Line2")
            await line.call_method(
                ua.NodeId.from_string("ns=2;s=Line2.RaiseAlarm"),
                ua.Variant(alarm, ua.VariantType.String),
                ua.Variant(700, ua.VariantType.UInt16),
            )


def test_a_value_or_event_over_the_broker_limit_is_reported_and_the_rest_keeps_flowing(
    opcua_simulator, gateway_factory
) -> None:
    sim = opcua_simulator("--period", "0.1")
    gw = gateway_factory(
        gateway(), adapters={"line2": adapter(sim.endpoint)}, expect=("broker", "core", "adapter-line2")
    )

    received: dict[str, list[dict]] = {}
    lock = threading.Lock()

    def on_message(_client, _userdata, message) -> None:
        with lock:
            received.setdefault(message.topic, []).append(json.loads(message.payload))

    operator = gw.client("operator")
    operator.on_message = on_message
    operator.subscribe([("line2/#", 1), ("millgate/adapter-line2/status", 1)])

    def count(topic: str) -> int:
        with lock:
            return len(received.get(topic, []))

    def latest(topic: str) -> dict:
        with lock:
            return (received.get(topic) or [{}])[-1]

    wait_until(lambda: count("line2/temperature") >= 3, 20, "the adapter publishing")
    pid = latest("millgate/adapter-line2/status")["pid"]

    asyncio.run(on_server(sim.endpoint, mode="x" * BIG, alarm="y" * BIG))
    wait_until(lambda: latest("line2/mode").get("quality") == "bad", 10, "the oversized value reported")
    mode = latest("line2/mode")
    assert mode["value"] is None and "is over the broker's limit of" in mode["reason"], mode
    assert int(mode["reason"].split()[2]) > BIG

    before = count("line2/temperature")
    wait_until(lambda: count("line2/temperature") >= before + 10, 10, "other values flowing after it")
    asyncio.run(on_server(sim.endpoint, mode="manual", alarm="small"))
    wait_until(lambda: latest("line2/mode").get("value") == "manual", 10, "the tag itself once it fits again")
    wait_until(lambda: latest("line2/events/alarms").get("Message") == "small", 10, "the event after the big one")

    status = wait_until(
        lambda: (s := latest("millgate/adapter-line2/status")).get("event_publish", {}).get("too_large") and s,
        10,
        "the heartbeat counting the dropped event",
    )
    assert status["pid"] == pid and status["publish"]["too_large"] >= 1
    assert status["event_publish"]["too_large"] == 1
    assert all(e["Message"] != "y" * BIG for e in received.get("line2/events/alarms", []))
