"""Commands to an OPC-UA server: a method call the broker hands over as a stored (retained) message is
never made (the real broker, the simulator), and JSON a Variant cannot hold (NaN, Infinity, an integer
of hundreds of digits, nesting past the parser) is refused with a reason instead of escaping as an
exception."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asyncua import Client, ua

from adapters.opcua.method_router import RETAINED_REFUSAL, MethodRouter, parse_call
from adapters.opcua.session import CallRefused, State
from adapters.opcua.variants import to_variant
from gateway.credentials import load_credentials
from gateway.mqtt import LocalMqtt
from tests.adapters.opcua.conftest import Harness, adapter_config

CALL = "line2/set_counter/call"


async def read_counter(endpoint: str) -> int:
    async with Client(endpoint) as client:
        return int(await client.get_node("ns=2;s=Line2.Counter").read_value())


def test_a_retained_method_call_is_refused_and_only_a_plain_one_is_made(opcua_simulator, gateway_factory) -> None:
    sim = opcua_simulator("--period", "60")
    gw = gateway_factory()
    config = adapter_config(
        sim.endpoint,
        [{"name": "counter", "node_id": "ns=2;s=Line2.Counter"}],
        methods=[{"name": "set_counter", "object_id": "ns=2;s=Line2", "method_id": "ns=2;s=Line2.SetCounter"}],
    )
    results: list[dict] = []
    lock = threading.Lock()
    operator = gw.client("operator")

    def on_result(_client, _userdata, message) -> None:
        with lock:
            results.append(json.loads(message.payload))

    operator.on_message = on_result
    operator.subscribe(CALL + "/result", qos=1)

    async def scenario() -> tuple[int, int]:
        async with Harness(config) as h:
            await h.wait_for(lambda: h.session.state == State.RUNNING, what="the session")
            calls = MethodRouter("line2", list(h.methods.values()), h.session.call)
            stop = asyncio.Event()
            # no Retain Handling on this subscription, so a retained call the broker holds arrives flagged
            mqtt = LocalMqtt(
                gw.paths.broker_socket,
                load_credentials(gw.paths.credentials_dir, "operator"),
                "retain-test",
                subscriptions=[(f, 1) for f in calls.filters()],
                on_message=calls.handle,
            )
            calls.broker = mqtt
            operator.publish(CALL, json.dumps({"args": [4242], "id": "r1"}), qos=1, retain=True).wait_for_publish(5)
            runner = asyncio.create_task(mqtt.run(stop))
            await h.wait_for(lambda: results, what="the refusal of the retained call")
            after_retained = await read_counter(sim.endpoint)
            operator.publish(CALL, json.dumps({"args": [77], "id": "p1"}), qos=1).wait_for_publish(5)
            await h.wait_for(lambda: len(results) == 2, what="the result of the plain call")
            stop.set()
            await runner
            return after_retained, await read_counter(sim.endpoint)

    try:
        after_retained, after_plain = asyncio.run(scenario())
    finally:
        operator.publish(CALL, b"", qos=1, retain=True).wait_for_publish(5)
    assert after_retained != 4242 and after_plain == 77
    assert results[0] | {"ts": 0} == {"ok": False, "error": RETAINED_REFUSAL, "id": "r1", "ts": 0}
    assert results[1]["ok"] is True and results[1]["id"] == "p1"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"args": [1], "id": NaN}', "NaN, which is not JSON"),
        (b"[Infinity]", "Infinity, which is not JSON"),
        (b"[" + b"9" * 5000 + b"]", "more than 4300 digits"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_call_payloads_that_are_not_strict_json_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(CallRefused, match=message):
        parse_call(payload)


@pytest.mark.parametrize(
    ("value", "vtype", "message"),
    [
        (10**400, ua.VariantType.Double, "out of the Double range"),  # float() raised OverflowError
        (10**400, ua.VariantType.Float, "out of the Float range"),  # math.isfinite raised OverflowError
        (10**400, ua.VariantType.Int64, "out of the Int64 range"),
        (float("nan"), ua.VariantType.Double, "not a finite number"),
        (float("inf"), ua.VariantType.Float, "not a finite number"),
        ([1.0, 10**400], ua.VariantType.Double, "out of the Double range"),
    ],
)
def test_values_no_variant_holds_are_refused_with_a_value_error(
    value: object, vtype: ua.VariantType, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        to_variant(value, vtype, 1 if isinstance(value, list) else -1)
