"""A session that reaches RUNNING and fails right after (a polled group whose Read times out every time)
backs off between attempts instead of reconnecting twice a second; once its polls answer, the backoff
starts over. The server is the simulator in this process, its polled Reads slowed by asyncua's own
PreRead server callback."""

from __future__ import annotations

import asyncio
import contextlib

from asyncua import ua
from asyncua.common.callback import CallbackType

from adapters.base.tag import Quality
from adapters.opcua.session import State
from adapters.opcua.simulator import Simulator
from tests.adapters.opcua.conftest import Harness, adapter_config
from tests.fixtures.gateway import free_port

SPEED = ua.NodeId.from_string("ns=2;s=Line2.Speed")


def test_a_session_whose_polls_time_out_backs_off_until_they_answer() -> None:
    port = free_port()
    slow = True

    async def slow_polls(event: object, _dispatcher: object) -> None:
        params = event.request_params  # type: ignore[attr-defined]
        polled = params.TimestampsToReturn == ua.TimestampsToReturn.Both
        if slow and polled and any(item.NodeId == SPEED for item in params.NodesToRead):
            await asyncio.sleep(0.5)  # past the adapter's 300 ms timeout

    async def scenario() -> None:
        nonlocal slow
        sim = Simulator(port, period_s=60)
        await sim.setup()
        sim.server.subscribe_server_callback(CallbackType.PreRead, slow_polls)
        await sim.server.start()
        config = adapter_config(
            f"opc.tcp://127.0.0.1:{port}/",
            [
                {"name": "temperature", "node_id": "ns=2;s=Line2.Temperature"},  # notified: not proof enough
                {"name": "speed", "node_id": "ns=2;s=Line2.Speed", "mode": "poll", "sampling_ms": 100},
            ],
            timeout_ms=300,
            backoff_max_ms=30_000,
        )
        try:
            async with Harness(config) as h:
                h.session.backoff.cap_s = 30.0
                await h.wait_for(lambda: h.session.sessions >= 1, what="a first session")
                await asyncio.sleep(6.0)
                sessions = h.session.sessions
                # delays 0.25-0.5, 0.5-1, 1-2, 2-4 s: at most 5 sessions in 6 s; reset each time, it was 8 or more
                assert sessions <= 5, f"{sessions} sessions in 6 s: the backoff was reset by each one"
                assert h.session.backoff.attempts >= 3
                assert any("no answer" in (r.reason or "") for r in h.readings["speed"])

                slow = False
                await h.wait_for(
                    lambda: (r := h.latest("speed")) is not None and r.quality == Quality.GOOD,
                    timeout_s=15,
                    what="polled values once the Reads answer",
                )
                assert h.session.state == State.RUNNING and h.session.backoff.attempts == 0
        finally:
            with contextlib.suppress(Exception):
                await sim.server.stop()

    asyncio.run(scenario())
