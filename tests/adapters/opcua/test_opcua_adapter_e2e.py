"""The OPC-UA adapter as the gateway runs it: `millgate run` starts `adapter-line2` under supervisord,
node values arrive on the real broker with source and server timestamps, a `/set` writes the server
in the node's type, a method call returns its outputs and alarms arrive as events, as the operator
sees them."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from asyncua import Client
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.fixtures.gateway import wait_until

GATEWAY = """
[gateway]
thing_name = "opcua-gw"
status_interval_s = 0.5
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
units = "degC"

[[nodes]]
name = "setpoint"
node_id = "ns=2;s=Line2.Setpoint"
writable = true

[[methods]]
name = "set_counter"
object_id = "ns=2;s=Line2"
method_id = "ns=2;s=Line2.SetCounter"

[[events]]
name = "alarms"
node_id = "ns=2;s=Line2"
event_type = "ns=2;s=Line2AlarmType"
fields = ["EventId", "Time", "Severity", "Message", "2:Temperature"]
"""


def test_values_writes_method_calls_and_events_flow_through_the_gateway(opcua_simulator, gateway_factory) -> None:
    sim = opcua_simulator("--period", "0.1", "--event-period", "0.3")
    gw = gateway_factory(GATEWAY, adapters={"line2": adapter(sim.endpoint)}, expect=("broker", "core", "adapter-line2"))

    received: dict[str, list[dict]] = {}
    lock = threading.Lock()

    def on_message(_client, _userdata, message) -> None:
        with lock:
            received.setdefault(message.topic, []).append(json.loads(message.payload))

    operator = gw.client("operator")
    operator.on_message = on_message
    operator.subscribe([("line2/#", 1), ("millgate/adapter-line2/status", 1)])

    def latest(topic: str) -> dict | None:
        with lock:
            return received.get(topic, [None])[-1]

    wait_until(lambda: len(received.get("line2/temperature", [])) >= 3, 20, "temperature values")
    temperature = latest("line2/temperature")
    assert temperature is not None and temperature["quality"] == "good" and temperature["units"] == "degC"
    assert isinstance(temperature["source_ts"], int) and isinstance(temperature["server_ts"], int)

    operator.publish("line2/setpoint/set", json.dumps({"value": 321, "id": "w1"}), qos=1)
    wait_until(lambda: latest("line2/setpoint/set/result"), 10, "the set result")
    assert latest("line2/setpoint/set/result") | {"ts": 0} == {"ok": True, "value": 321, "id": "w1", "ts": 0}
    wait_until(lambda: (latest("line2/setpoint") or {}).get("value") == 321, 10, "the new setpoint published")

    async def server_setpoint() -> int:
        async with Client(sim.endpoint) as client:
            return await client.get_node("ns=2;s=Line2.Setpoint").read_value()

    assert asyncio.run(server_setpoint()) == 321

    operator.publish("line2/set_counter/call", json.dumps({"args": [7], "id": "c1"}), qos=1)
    wait_until(lambda: latest("line2/set_counter/call/result"), 10, "the method result")
    result = latest("line2/set_counter/call/result")
    assert result["ok"] is True and result["id"] == "c1" and isinstance(result["outputs"][0], int)

    operator.publish("line2/setpoint/set", "99999", qos=1)
    wait_until(lambda: (latest("line2/setpoint/set/result") or {}).get("ok") is False, 10, "the refusal")
    assert "Int16" in latest("line2/setpoint/set/result")["error"]

    wait_until(lambda: len(received.get("line2/events/alarms", [])) >= 2, 10, "two alarm events")
    alarm = latest("line2/events/alarms")
    assert alarm is not None and set(alarm) == {"EventId", "Time", "Severity", "Message", "Temperature"}
    assert isinstance(alarm["Time"], int) and alarm["Message"].startswith("temperature alarm ")

    heartbeat = wait_until(
        lambda: (latest("millgate/adapter-line2/status") or {}).get("event_publish", {}).get("published"),
        10,
        "the heartbeat counting published events",
    )
    assert heartbeat
    status = latest("millgate/adapter-line2/status")["server"]
    assert status["session"] == "running" and status["writes_ok"] == 1


def test_a_pinned_server_certificate_is_found_next_to_the_adapter_file(
    opcua_simulator, gateway_factory, tmp_path: Path
) -> None:
    # `server_certificate` is relative to the adapter's file, as `certificate` is; the adapter process
    # runs in another directory (it was looked up there and the session never came up)
    server_dir = tmp_path / "server"
    sim = opcua_simulator("--period", "0.1", "--cert-dir", str(server_dir), "--secure-only")
    pem = x509.load_der_x509_certificate((server_dir / "server-cert.der").read_bytes()).public_bytes(Encoding.PEM)
    secured = adapter(sim.endpoint).split("[[nodes]]")[0] + (
        'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\nserver_certificate = "server.pem"\n'
        '\n[[nodes]]\nname = "temperature"\nnode_id = "ns=2;s=Line2.Temperature"\nsampling_ms = 50\n'
    )
    gw = gateway_factory(
        GATEWAY,
        adapters={"line2": secured},
        files={"adapters/server.pem": pem.decode()},
        expect=("broker", "core", "adapter-line2"),
    )
    values: list[dict] = []
    operator = gw.client("operator")
    operator.on_message = lambda _c, _u, message: values.append(json.loads(message.payload))
    operator.subscribe("line2/temperature", qos=1)
    wait_until(lambda: any(v["quality"] == "good" for v in values), 30, "values over the pinned secure channel")
