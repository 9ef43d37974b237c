"""A session that heals itself when the server fails it while the connection stays up (the simulator's
--control hooks, a real asyncua server in its own process): subscriptions deleted server-side (asyncua's
publish loop stops silently on BadNoSubscription, so only the keep-alive watchdog notices) and sessions
closed server-side (noticed by the next write or method call). Either way the nodes read bad, the
adapter reconnects, recreates its monitored items and values flow again."""

from __future__ import annotations

import asyncio

import pytest
from asyncua import Client, ua

from adapters.base.tag import Quality
from adapters.opcua.session import CallFailed, State, WriteFailed
from tests.adapters.opcua.conftest import Harness, adapter_config


async def control(endpoint: str, hook: str) -> int:
    """Call one of the simulator's test hooks (ns=2;s=Simulator.<hook>) from a session of our own."""
    async with Client(endpoint) as client:
        simulator = client.get_node("ns=2;s=Simulator")
        return int(await simulator.call_method(ua.NodeId.from_string(f"ns=2;s=Simulator.{hook}")))


async def read_server(endpoint: str, node: str) -> object:
    async with Client(endpoint) as client:
        return await client.get_node(node).read_value()


def test_subscription_deleted_server_side_is_noticed_by_the_keepalive_watchdog(opcua_simulator) -> None:
    sim = opcua_simulator("--period", "0.1", "--control")
    config = adapter_config(
        sim.endpoint,
        [{"name": "counter", "node_id": "ns=2;s=Line2.Counter", "sampling_ms": 50}],
        keepalive_ms=500,
        watchdog_ms=60_000,  # asyncua's own probe reads the server state, which stays fine here
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            readings = h.readings["counter"]
            await h.wait_for(lambda: sum(r.quality == Quality.GOOD for r in readings) >= 2, what="values")
            assert h.session.sessions == 1
            assert await control(sim.endpoint, "DropSubscriptions") >= 1
            mark = len(readings)

            def bad_since() -> int | None:
                return next((i for i in range(mark, len(readings)) if readings[i].quality == Quality.BAD), None)

            first_bad = await h.wait_for(bad_since, what="bad quality once the subscription is gone")
            reason = readings[first_bad].reason or ""
            assert "keep-alive" in reason or "dropped by the server" in reason, reason

            def good_after() -> bool:
                return sum(r.quality == Quality.GOOD for r in readings[first_bad:]) >= 2

            await h.wait_for(good_after, timeout_s=15, what="values again after the reconnect")
            counts = [r.value for r in readings[first_bad:] if r.quality == Quality.GOOD]
            assert counts == sorted(counts)  # the re-read current value, then fresh changes
            assert h.session.sessions == 2 and h.session.state == State.RUNNING

    asyncio.run(scenario())


@pytest.mark.parametrize("service", ["write", "call"])
def test_session_closed_server_side_is_noticed_by_a_write_or_call_and_healed(opcua_simulator, service: str) -> None:
    sim = opcua_simulator("--period", "60", "--control")
    config = adapter_config(
        sim.endpoint,
        [{"name": "setpoint", "node_id": "ns=2;s=Line2.Setpoint", "writable": True, "sampling_ms": 50}],
        methods=[{"name": "set_counter", "object_id": "ns=2;s=Line2", "method_id": "ns=2;s=Line2.SetCounter"}],
        keepalive_ms=60_000,  # neither watchdog would notice within the test: the failed service call must
        watchdog_ms=60_000,
    )

    async def scenario() -> None:
        async with Harness(config) as h:
            await h.wait_for(lambda: h.session.state == State.RUNNING, what="the session")
            assert await control(sim.endpoint, "CloseSubscribedSessions") == 1
            if service == "write":
                with pytest.raises(WriteFailed, match=r"setpoint.*BadSession"):
                    await h.session.submit_write(h.points["setpoint"], 7)
            else:
                with pytest.raises(CallFailed, match=r"set_counter.*BadSession"):
                    await h.session.call(h.methods["set_counter"], [7])
            await h.wait_for(
                lambda: h.latest("setpoint").quality == Quality.BAD,  # type: ignore[union-attr]
                what="bad quality after the session error",
            )
            await h.wait_for(lambda: h.session.sessions == 2 and h.session.state == State.RUNNING, what="a new session")
            await h.wait_for(lambda: h.latest("setpoint").quality == Quality.GOOD, what="the re-read value")  # type: ignore[union-attr]
            if service == "write":
                assert await h.session.submit_write(h.points["setpoint"], 8) == 8
                assert await read_server(sim.endpoint, "ns=2;s=Line2.Setpoint") == 8
            else:
                await h.session.call(h.methods["set_counter"], [8])
                assert await read_server(sim.endpoint, "ns=2;s=Line2.Counter") == 8

    asyncio.run(scenario())
