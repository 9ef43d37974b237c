"""The Modbus adapter as the gateway runs it: `millgate run` starts `adapter-line1` under supervisord,
its tag values arrive on the real broker, a `/set` writes the simulator's registers and the result
comes back on `/set/result`, and its heartbeat carries per-device statistics."""

from __future__ import annotations

import json
import threading
import time

from tests.fixtures.gateway import wait_until

GATEWAY = """
[gateway]
thing_name = "modbus-gw"
status_interval_s = 0.5

[[subscriptions]]
source = "adapter:line1"
target = "cloud"
topic = "line1/#"
"""


def adapter(port: int) -> str:
    return f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "press-01"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_ms = 100

[[devices.tags]]
name = "cycle"
table = "holding"
address = 0
type = "uint16"

[[devices.tags]]
name = "temperature"
table = "holding"
address = 1
type = "float32"
units = "degC"

[[devices.tags]]
name = "speed_setpoint"
table = "holding"
address = 20
type = "uint16"
writable = true

[[devices.tags]]
name = "parts"
table = "holding"
address = 3
type = "int32"
"""


def test_tag_values_flow_to_the_broker_and_a_set_round_trips(simulator, gateway_factory) -> None:
    sim = simulator()
    port = sim.start_tcp()
    sim.call(sim.sim.load_demo(unit=1))
    gw = gateway_factory(GATEWAY, adapters={"line1": adapter(port)}, expect=("broker", "core", "adapter-line1"))

    received: dict[str, list[dict]] = {}
    lock = threading.Lock()

    def on_message(_client, _userdata, message) -> None:
        with lock:
            received.setdefault(message.topic, []).append(json.loads(message.payload))

    operator = gw.client("operator")
    operator.on_message = on_message
    operator.subscribe([("line1/#", 1), ("millgate/adapter-line1/status", 1)])

    def latest(topic: str) -> dict | None:
        with lock:
            return received.get(topic, [None])[-1]

    for step in range(3):  # the simulator's registers change; the adapter publishes each change
        sim.call(sim.sim.step(unit=1))
        wait_until(lambda s=step: (latest("line1/press-01/cycle") or {}).get("value") == sim.sim.steps, 30, "cycle")
    temperature = latest("line1/press-01/temperature")
    assert temperature["quality"] == "good" and 20 <= temperature["value"] <= 30 and temperature["units"] == "degC"
    assert isinstance(temperature["ts"], int) and abs(temperature["ts"] / 1000 - time.time()) < 10

    operator.publish("line1/press-01/speed_setpoint/set", json.dumps({"value": 1500, "id": "cmd-1"}), qos=1)
    wait_until(lambda: latest("line1/press-01/speed_setpoint/set/result"), 10, "the set result")
    result = latest("line1/press-01/speed_setpoint/set/result")
    assert result["ok"] is True and result["value"] == 1500 and result["id"] == "cmd-1"
    assert sim.get("holding", 20) == [1500]
    wait_until(lambda: (latest("line1/press-01/speed_setpoint") or {}).get("value") == 1500, 10, "read back")

    operator.publish("line1/press-01/parts/set", "5", qos=1)
    wait_until(lambda: latest("line1/press-01/parts/set/result"), 10, "the refusal")
    refused = latest("line1/press-01/parts/set/result")
    assert refused["ok"] is False and "read-only" in refused["error"]

    def device_stats() -> dict | None:
        status = latest("millgate/adapter-line1/status") or {}
        device = status.get("devices", {}).get("press-01")
        return device if device and device["writes_ok"] == 1 else None

    stats = wait_until(device_stats, 10, "per-device stats in the heartbeat")
    assert stats["state"] == "up" and stats["latency_p99_ms"] is not None and stats["requests"] > 3
