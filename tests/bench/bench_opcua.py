"""OPC-UA adapter throughput: data-change notifications/s received from the simulator (an asyncua
server in its own process) whose N Double variables change together (10,000 changes/s offered), through the adapter's
session (monitored items, quality and timestamp mapping, change filter, JSON rendering) next to a bare
asyncua client subscription counting the same notifications, in the same run.

MQTT is left out (as in bench_modbus), so the figure is the adapter's own cost on top of asyncua.
Run: `make bench` (pytest tests/bench -m bench -s); the unmarked smoke test runs a tiny N by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
OFFERED_PER_S = 10_000  # the simulator changes every bench variable every items / OFFERED_PER_S seconds
SAMPLING_MS = 50
SIMULATOR = (sys.executable, "-m", "adapters.opcua.simulator")
WATCHDOG_S = 10.0  # a server busy writing 10,000 values answers the liveness probe late; that is not a loss


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def simulator_process(items: int, period_s: float) -> Any:
    port = _free_port()
    process = subprocess.Popen(
        [*SIMULATOR, "--port", str(port), "--items", str(items), "--period", str(period_s)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the OPC-UA simulator did not start")
            time.sleep(0.05)
        yield f"opc.tcp://127.0.0.1:{port}/"
    finally:
        process.kill()
        process.wait(5)


async def _count_for(counter: list[int], ready: Any, seconds: float) -> float:
    await ready()
    start_count, started = counter[0], time.monotonic()
    await asyncio.sleep(seconds)
    return (counter[0] - start_count) / (time.monotonic() - started)


async def bare_rate(endpoint: str, items: int, seconds: float) -> float:
    from asyncua import Client, ua

    counter = [0]

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            counter[0] += 1

    async with Client(endpoint, timeout=30, watchdog_intervall=WATCHDOG_S) as client:
        subscription = await client.create_subscription(SAMPLING_MS, Handler())
        nodes = [client.get_node(ua.NodeId(f"Bench.{i}", 2)) for i in range(items)]
        for start in range(0, items, 500):
            await subscription.subscribe_data_change(nodes[start : start + 500], sampling_interval=SAMPLING_MS)

        async def ready() -> None:
            while counter[0] < items:
                await asyncio.sleep(0.05)

        return await _count_for(counter, ready, seconds)


async def adapter_rate(endpoint: str, items: int, seconds: float) -> float:
    from adapters.base.change_filter import ChangeFilter
    from adapters.base.tag import Point, TagValue
    from adapters.opcua.node_map import build_bindings
    from adapters.opcua.session import OpcuaSession, State
    from gateway.adapter_config import OpcuaAdapter

    config = OpcuaAdapter.model_validate(
        {
            "name": "bench",
            "protocol": "opcua",
            "endpoint": endpoint,
            "timeout_ms": 30_000,
            "watchdog_ms": int(WATCHDOG_S * 1000),
            "nodes": [
                {"name": f"b{i}", "node_id": f"ns=2;s=Bench.{i}", "sampling_ms": SAMPLING_MS} for i in range(items)
            ],
        }
    )
    changes = ChangeFilter()
    counter = [0]

    def sink(point: Point, reading: TagValue) -> None:
        counter[0] += 1
        if changes.admit(point, reading):
            reading.payload(point.units)

    nodes, methods = build_bindings(config)
    session = OpcuaSession(config, nodes, methods, sink)
    task = asyncio.create_task(session.run())

    async def ready() -> None:
        while session.state != State.RUNNING or counter[0] < items:
            await asyncio.sleep(0.05)

    try:
        return await _count_for(counter, ready, seconds)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(item_counts: tuple[int, ...] = (1000, 10000), seconds: float = 5.0) -> dict[str, dict[str, object]]:
    from tests.bench import results

    out: dict[str, dict[str, object]] = {}
    rows = [f"{'items':>6} {'adapter/s':>12} {'bare/s':>12} {'offered/s':>10}"]
    for items in item_counts:
        period_s = max(items / OFFERED_PER_S, 0.1)
        with simulator_process(items, period_s) as endpoint:
            bare = asyncio.run(bare_rate(endpoint, items, seconds))
            adapter = asyncio.run(adapter_rate(endpoint, items, seconds))
        rows.append(f"{items:>6} {adapter:>12,.0f} {bare:>12,.0f} {items / period_s:>10,.0f}")
        suffix = "" if items == 1000 else f"_{items // 1000}k" if items % 1000 == 0 else f"_{items}"
        name = f"opcua_notifications_per_s{suffix}"
        note = (
            f"{items} Double variables changing every {period_s * 1000:.0f} ms (offered {items / period_s:,.0f}/s); "
            "adapter: session + quality/timestamp mapping + change filter + JSON; baseline: bare asyncua subscription"
        )
        out[name] = results.record(name, adapter, "notifications/s", bare, note)
    print("\n".join(rows))
    return out


@pytest.mark.bench
def test_bench_opcua() -> None:
    figures = run()
    assert all(f["value"] for f in figures.values())


def test_bench_opcua_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tiny N so the benchmark code stays working; its figures go to a scratch file."""
    import tests.bench.results as results

    monkeypatch.setattr(results, "RESULTS", tmp_path / "results.json")
    figures = run(item_counts=(50,), seconds=0.5)
    assert set(figures) == {"opcua_notifications_per_s_50"}
    assert all(f["value"] and f["baseline"] for f in figures.values())


if __name__ == "__main__":
    run()
