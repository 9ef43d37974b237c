"""OPC-UA adapter benchmarks, each next to a bare asyncua client measured in the same run.

opcua_notifications_per_s(_10k): data-change notifications/s that reached the broker from N Double variables
of the simulator (an asyncua server in its own process, 10,000 changes/s offered), with the adapter running
as the gateway runs it (`millgate run`: supervisord, mosquitto, adapter-bench), counted by a QoS 1 operator
subscription to the adapter's topics; baseline: a bare asyncua subscription counting the same notifications.
opcua_reconnect_s: with values flowing, the simulator is killed and restarted on the same port; the time from
the server listening again to the first fresh good value at the broker; baseline: a bare asyncua client alone
(its own process) retrying every 0.1 s, from listening to its first notification, on restarts of the same
server earlier in the run (each side alone, so neither waits behind the other's 1,000 monitored items).
Run: `make bench` (pytest tests/bench -m bench -s); the unmarked smoke test runs a tiny N by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bench.bench_local import AdapterCounter
from tests.fixtures.gateway import RunningGateway, start_gateway, wait_until

REPO = Path(__file__).resolve().parents[2]
OFFERED_PER_S = 10_000  # the simulator changes every bench variable every items / OFFERED_PER_S seconds
SAMPLING_MS = 50
SIMULATOR = (sys.executable, "-m", "adapters.opcua.simulator")
WATCHDOG_S = 10.0  # a server busy writing 10,000 values answers the liveness probe late; that is not a loss
RETRY_S = 0.1  # the bare client's reconnect interval; the adapter's backoff is capped at the same
ADAPTER = "bench"
GATEWAY = """
[gateway]
thing_name = "bench-opcua"
status_interval_s = 0.5
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SimulatorProcess:
    """The simulator on a fixed port, killable and restartable there."""

    def __init__(self, items: int, period_s: float):
        self.port = _free_port()
        self.argv = [*SIMULATOR, "--port", str(self.port), "--items", str(items), "--period", str(period_s)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def start(self) -> float:
        """Start it and return time.monotonic() when it listens."""
        self.process = subprocess.Popen(self.argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return time.monotonic()
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the OPC-UA simulator did not start on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


@contextlib.contextmanager
def simulator_process(items: int, period_s: float) -> Any:
    sim = SimulatorProcess(items, period_s)
    try:
        sim.start()
        yield sim
    finally:
        sim.kill()


async def _count_for(counter: list[int], ready: Any, seconds: float) -> float:
    await ready()
    start_count, started = counter[0], time.monotonic()
    await asyncio.sleep(seconds)
    return (counter[0] - start_count) / (time.monotonic() - started)


async def _subscribe_all(client: Any, handler: Any, items: int) -> None:
    subscription = await client.create_subscription(SAMPLING_MS, handler)
    nodes = [client.get_node(f"ns=2;s=Bench.{i}") for i in range(items)]
    for start in range(0, items, 500):
        await subscription.subscribe_data_change(nodes[start : start + 500], sampling_interval=SAMPLING_MS)


async def bare_rate(endpoint: str, items: int, seconds: float) -> float:
    from asyncua import Client

    counter = [0]

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            counter[0] += 1

    async with Client(endpoint, timeout=30, watchdog_intervall=WATCHDOG_S) as client:
        await _subscribe_all(client, Handler(), items)

        async def ready() -> None:
            while counter[0] < items:
                await asyncio.sleep(0.05)

        return await _count_for(counter, ready, seconds)


async def bare_reconnect(endpoint: str, items: int, refused: Any, give_up_s: float = 60) -> float:
    """Retry every RETRY_S until connected and subscribed; time.monotonic() of the first notification.
    `refused` is set at the first failed attempt (the server is down and the loop is retrying)."""
    from asyncua import Client, ua

    first = asyncio.Event()
    first_at: list[float] = []

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            if not first_at:
                first_at.append(time.monotonic())  # may come before the last batch of items is created
            first.set()

    deadline = time.monotonic() + give_up_s
    while True:
        try:
            async with Client(endpoint, timeout=10, watchdog_intervall=WATCHDOG_S) as client:
                await _subscribe_all(client, Handler(), items)
                async with asyncio.timeout(10):
                    await first.wait()
                return first_at[0]
        except (OSError, TimeoutError, ua.UaError):
            refused.set()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_S)


def _bare_reconnect_process(endpoint: str, items: int, refused: Any, done: Any) -> None:
    """In its own process, so the bench's broker counter does not share its interpreter (CLOCK_MONOTONIC is
    system-wide, so its time.monotonic() compares with the parent's)."""
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # revised-values notices, as a fresh interpreter logs
    done.put(asyncio.run(bare_reconnect(endpoint, items, refused)))


class BrokerCounter(AdapterCounter):
    """AdapterCounter that, once armed, also notes when the first fresh good value arrives: quality good,
    sourced by the restarted server (source_ts not before it was started)."""

    def __init__(self, gw: RunningGateway):
        self.fresh_after_ms: int | None = None
        self.first_fresh: float | None = None
        super().__init__(gw, f"{ADAPTER}/#")

    def arm(self, fresh_after_ms: int | None) -> None:
        with self.lock:
            self.first_fresh, self.fresh_after_ms = None, fresh_after_ms

    def _on_message(self, _c: object, _u: object, message: Any) -> None:
        with self.lock:
            self.count += 1
            if self.fresh_after_ms is None or self.first_fresh is not None:
                return
            body = json.loads(message.payload)
            if body.get("quality") == "good" and body.get("source_ts", body.get("ts", 0)) >= self.fresh_after_ms:
                self.first_fresh = time.monotonic()


def adapter_toml(endpoint: str, items: int) -> str:
    nodes = "".join(
        f'\n[[nodes]]\nname = "b{i}"\nnode_id = "ns=2;s=Bench.{i}"\nsampling_ms = {SAMPLING_MS}\n' for i in range(items)
    )
    return (
        f'name = "{ADAPTER}"\nprotocol = "opcua"\nendpoint = "{endpoint}"\ntimeout_ms = 30000\n'
        f"watchdog_ms = {int(WATCHDOG_S * 1000)}\nbackoff_max_ms = {int(RETRY_S * 1000)}\n{nodes}"
    )


@contextlib.contextmanager
def gateway_with_adapter(endpoint: str, items: int) -> Any:
    """`millgate run` with one config holding just the OPC-UA adapter, and a counter at its broker."""
    root = Path(tempfile.mkdtemp(prefix="mgopc", dir="/tmp"))  # short: the broker's unix socket lives below
    config = root / "etc"
    (config / "adapters").mkdir(parents=True)
    (config / "gateway.toml").write_text(GATEWAY)
    (config / "adapters" / f"{ADAPTER}.toml").write_text(adapter_toml(endpoint, items))
    gw: RunningGateway | None = None
    counter: BrokerCounter | None = None
    try:
        gw = start_gateway(config, root / "s", expect=("broker", "core", f"adapter-{ADAPTER}"))
        counter = BrokerCounter(gw)
        yield gw, counter
    finally:
        if counter is not None:
            counter.close()
        if gw is not None:
            gw.stop()
            gw.kill_leftovers()
        if not os.environ.get("MILLGATE_BENCH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


def broker_rate(counter: BrokerCounter, items: int, seconds: float) -> float:
    """Notifications/s reaching the broker, once every item's first value has arrived."""
    wait_until(lambda: counter.count >= items, 120, f"first values of {items} items at the broker", 0.1)
    start_count, started = counter.count, time.monotonic()
    time.sleep(seconds)
    return (counter.count - start_count) / (time.monotonic() - started)


def bare_reconnect_s(sim: SimulatorProcess, items: int) -> float:
    """Kill the server, restart it on its port with only a bare client retrying; listening -> first notification."""
    sim.kill()
    context = multiprocessing.get_context("spawn")
    refused, done = context.Event(), context.Queue()
    bare = context.Process(target=_bare_reconnect_process, args=(sim.endpoint, items, refused, done))
    bare.start()
    try:
        assert refused.wait(30), "the bare client's retry loop did not start"
        listening = sim.start()
        return float(done.get(timeout=90)) - listening
    finally:
        bare.join(10)
        if bare.is_alive():
            bare.kill()
            bare.join()


def adapter_reconnect_s(sim: SimulatorProcess, counter: BrokerCounter, items: int) -> float:
    """Kill the server while values flow, restart it on its port; listening -> first fresh value at the broker."""
    counter.arm(None)
    flowing = counter.count + items
    wait_until(lambda: counter.count >= flowing, 120, "values flowing before the restart", 0.1)
    sim.kill()
    counter.arm(int(time.time() * 1000))
    listening = sim.start()
    wait_until(lambda: counter.first_fresh, 90, "the adapter's first fresh value after the restart", 0.01)
    assert counter.first_fresh is not None
    return counter.first_fresh - listening


def _suffix(items: int) -> str:
    return "" if items == 1000 else f"_{items // 1000}k" if items % 1000 == 0 else f"_{items}"


def run(
    item_counts: tuple[int, ...] = (1000, 10000), seconds: float = 5.0, reconnect_items: int = 1000, restarts: int = 3
) -> dict[str, dict[str, object]]:
    from tests.bench import results

    out: dict[str, dict[str, object]] = {}
    rows = [f"{'items':>6} {'broker/s':>12} {'bare/s':>12} {'offered/s':>10}"]
    for items in item_counts:
        period_s = max(items / OFFERED_PER_S, 0.1)
        with simulator_process(items, period_s) as sim:
            bare = asyncio.run(bare_rate(sim.endpoint, items, seconds))
            restarts_here = restarts if items == reconnect_items else 0
            bare_rounds = [bare_reconnect_s(sim, items) for _ in range(restarts_here)]
            with gateway_with_adapter(sim.endpoint, items) as (_gw, counter):
                delivered = broker_rate(counter, items, seconds)
                adapter_rounds = [adapter_reconnect_s(sim, counter, items) for _ in range(restarts_here)]
        rows.append(f"{items:>6} {delivered:>12,.0f} {bare:>12,.0f} {items / period_s:>10,.0f}")
        name = f"opcua_notifications_per_s{_suffix(items)}"
        note = (
            f"{items} Double variables changing every {period_s * 1000:.0f} ms (offered {items / period_s:,.0f}/s); "
            "value: notifications reaching the broker from the adapter under `millgate run` (session, "
            "quality/timestamp mapping, change filter, JSON, QoS 1 publish), counted by a QoS 1 operator "
            "subscription; baseline: bare asyncua subscription to the same server, same run"
        )
        out[name] = results.record(name, delivered, "notifications/s", bare, note)
        if adapter_rounds:
            name = f"opcua_reconnect_s{_suffix(items)}"
            adapter_s, bare_s = statistics.median(adapter_rounds), statistics.median(bare_rounds)
            each = "; ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(adapter_rounds, bare_rounds, strict=True))
            note = (
                f"{items} monitored items; simulator killed while values flowed and restarted on its port, "
                f"median of {len(adapter_rounds)} restarts each (adapter/bare s: {each}); value: from the server "
                "listening again to the first good value it sourced reaching the broker (adapter under `millgate "
                f"run`, backoff_max_ms={int(RETRY_S * 1000)}); baseline: a bare asyncua client alone retrying every "
                f"{RETRY_S} s (connect + subscribe {items} items) to its first notification, on restarts of the "
                "same server in the same run before the gateway started"
            )
            out[name] = results.record(name, adapter_s, "s", bare_s, note)
    print("\n".join(rows))
    return out


@pytest.mark.bench
@pytest.mark.timeout(600)
def test_bench_opcua() -> None:
    figures = run()
    assert all(f["value"] for f in figures.values())


def test_bench_opcua_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tiny N so the benchmark code (broker count, one reconnect) stays working; figures go to a scratch file."""
    import tests.bench.results as results

    monkeypatch.setattr(results, "RESULTS", tmp_path / "results.json")
    figures = run(item_counts=(50,), seconds=0.5, reconnect_items=50, restarts=1)
    assert set(figures) == {"opcua_notifications_per_s_50", "opcua_reconnect_s_50"}
    assert all(f["value"] and f["baseline"] for f in figures.values())


if __name__ == "__main__":
    run()
