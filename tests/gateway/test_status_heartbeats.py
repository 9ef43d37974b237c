"""Heartbeats speak only for the component whose status topic they are on: the broker lets a function
write under millgate/fn-<name>/ and nowhere else, so a payload there that names another component
(the uplink going offline, say) must neither reach the core's health view, where it would fire the
uplink-offline callbacks, nor `millgate status`, which deployments wait on.
"""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as paho

from gateway.topics import status_topic
from tests.fixtures.gateway import wait_until

GATEWAY = """
[gateway]
thing_name = "beat-gw"
status_interval_s = 600  # each heartbeat once, at connect: the spoof stays the retained one on its topic

[[functions]]
name = "spoofer"
code = "functions/spoofer"
handler = "main.function_handler"
run_as = "1001:1001"
"""
FILES = {"functions/spoofer/main.py": "def function_handler(event, context):\n    return event\n"}


def _publish(client: paho.Client, topic: str, payload: dict, retain: bool) -> str:
    """Publish QoS 1 and return the broker's PUBACK reason."""
    outcome: list[str] = []
    done = threading.Event()

    def on_publish(_c: object, _u: object, _mid: int, reason: object, _p: object) -> None:
        outcome.append(str(reason))
        done.set()

    client.on_publish = on_publish
    client.publish(topic, json.dumps(payload), qos=1, retain=retain)
    assert done.wait(5), f"no PUBACK for {topic}"
    return outcome[0]


def test_a_heartbeat_claiming_another_component_is_ignored_by_the_core_and_by_status(gateway_factory) -> None:
    gw = gateway_factory(GATEWAY, files=FILES)
    core_log = gw.paths.component_log("core")
    for component in ("core", "fn-spoofer"):  # their heartbeats first, so the spoof is the last word
        wait_until(lambda c=component: f"component={c} state=online" in core_log.read_text(), 10, f"{component} online")
    spoofer = gw.client("function.spoofer")
    own_topic = status_topic("fn-spoofer")
    assert _publish(spoofer, own_topic, {"component": "uplink", "state": "offline"}, retain=True) == "Success"
    assert _publish(spoofer, own_topic, {"component": "core", "state": "offline"}, retain=False) == "Success"

    # its own heartbeat last: once the core has logged it, it has dealt with both spoofs before it
    assert _publish(spoofer, own_topic, {"component": "fn-spoofer", "state": "marker"}, retain=False) == "Success"
    wait_until(lambda: "component=fn-spoofer state=marker" in core_log.read_text(), 10, "the core to see the marker")
    logged = core_log.read_text()
    assert "component=uplink state=offline" not in logged
    assert "component=core state=offline" not in logged
    assert f"topic={own_topic} claims='uplink'" in logged

    components = gw.status()["components"]
    assert "uplink" not in components
    assert components["core"]["state"] == "online"
