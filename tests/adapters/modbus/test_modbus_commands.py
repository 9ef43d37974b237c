"""Write commands on their way to a device: a value no register holds is refused before anything is sent
and the bus goes on, and a command published with retain is written once, when it arrives, and not again
when the adapter comes back after a restart (the broker still holds it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import pytest

from adapters.base.commands import WriteRefused
from tests.adapters.modbus.conftest import eventually
from tests.fixtures.gateway import wait_until


def adapter(port: int, poll_ms: int = 100) -> str:
    return f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "press-01"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_ms = {poll_ms}

[[devices.tags]]
name = "cycle"
table = "holding"
address = 0
type = "uint16"

[[devices.tags]]
name = "flow"
table = "holding"
address = 4
type = "float64"
scale = 0.1
writable = true

[[devices.tags]]
name = "speed_setpoint"
table = "holding"
address = 20
type = "uint16"
writable = true
"""


def test_a_value_that_would_encode_as_infinity_is_refused_and_the_bus_keeps_working(simulator, harness) -> None:
    """1e308 with scale 0.1 used to be encoded as +Inf, written to the device, and its read-back decode
    raised outside the scheduler's error handling: the bus task, and the adapter, ended."""
    sim = simulator()
    port = sim.start_tcp()
    sim.set("holding", 4, [0x4059, 0, 0, 0])  # 100.0 raw: 10.0 after scale

    async def scenario() -> None:
        async with harness(adapter(port)) as h:
            await eventually(lambda: h.recorder.value("press-01/flow") == 10.0, what="the first poll")
            for value in (1e308, 1.7976931348623157e308, 10**400):
                with pytest.raises(WriteRefused, match="outside the float64 range"):
                    h.buses.submit_write(h.point("press-01/flow"), value)
            sim.set("holding", 0, [41])
            await eventually(lambda: h.recorder.value("press-01/cycle") == 41, what="polls after the refusals")
            assert await h.write("press-01/flow", 12.5) == 12.5

    asyncio.run(scenario())
    assert sim.get("holding", 4, 4) == [0x405F, 0x4000, 0, 0]  # 125.0 raw: only the good write reached it


GATEWAY = """
[gateway]
thing_name = "modbus-gw"
status_interval_s = 0.5
"""
SET = "line1/press-01/speed_setpoint/set"


def test_a_retained_set_is_written_once_and_not_again_when_the_adapter_restarts(simulator, gateway_factory) -> None:
    sim = simulator()
    port = sim.start_tcp()
    sim.set("holding", 20, [7])
    gw = gateway_factory(GATEWAY, adapters={"line1": adapter(port)}, expect=("broker", "core", "adapter-line1"))

    results: list[dict] = []
    beats: list[dict] = []
    lock = threading.Lock()

    def on_message(_client, _userdata, message) -> None:
        with lock:
            (beats if message.topic.startswith("millgate/") else results).append(json.loads(message.payload))

    operator = gw.client("operator")
    operator.on_message = on_message
    operator.subscribe([(SET + "/result", 1), ("millgate/adapter-line1/status", 1)])

    def online_pid(other_than: int | None = None) -> int | None:
        with lock:
            pids = [b["pid"] for b in beats if b["state"] == "online" and b["pid"] != other_than]
        return pids[-1] if pids else None

    first_pid = wait_until(online_pid, 10, "the adapter online (its heartbeat follows its subscriptions)")
    # Node-RED or `mosquitto_pub -r`: a setpoint published with retain, while the adapter runs
    operator.publish(SET, json.dumps({"value": 1500, "id": "r1"}), qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: results, 10, "the result of the retained command")
    assert results[0]["ok"] is True and results[0]["id"] == "r1" and sim.get("holding", 20) == [1500]
    sim.set("holding", 20, [7])  # the operator at the panel sets it back

    # the broker still holds the command; a restarted adapter subscribes again and must not get it
    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: online_pid(other_than=first_pid), 15, "the restarted adapter online")
    time.sleep(1.0)
    assert sim.get("holding", 20) == [7]
    assert len(results) == 1, results

    operator.publish(SET, json.dumps({"value": 1600, "id": "p1"}), qos=1).wait_for_publish(5)
    wait_until(lambda: results[-1].get("id") == "p1", 10, "the result of a plain command")
    assert results[-1]["ok"] is True and sim.get("holding", 20) == [1600]
    operator.publish(SET, b"", qos=1, retain=True).wait_for_publish(5)  # clears the retained command
