"""Modbus adapter throughput: registers/s and requests/s polled from a local pymodbus server (the
simulator, in its own process) with 1,000 and 10,000 uint16 tags, next to a bare pymodbus client
loop reading the same blocks in the same run, and the adapter's CPU per 1,000 tag values/s.

The adapter side is the real bus scheduler, codec, change filter and JSON rendering (every tag set to
publish on every poll); MQTT is left out, so the figure is the adapter's own cost.
Run: `make bench` (pytest tests/bench -m bench -s); the unmarked smoke test runs a tiny N by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Below the 10 ms a config may ask for: the scheduler polls back to back, as the bare loop does.
SATURATE_PERIOD_S = 1e-6


@dataclass
class Run:
    requests: int
    registers: int
    wall_s: float
    cpu_s: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def registers_per_s(self) -> float:
        return self.registers / self.wall_s

    @property
    def cpu_pct_per_1000_per_s(self) -> float:
        """Percent of one core spent per 1,000 registers (= tag values) per second."""
        return 100 * self.cpu_s / self.wall_s / (self.registers_per_s / 1000)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def simulator_process() -> Any:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.modbus.simulator", "--port", str(port), "--period", "3600"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(5)


def adapter_config(port: int, tags: int) -> Any:
    from gateway.adapter_config import ModbusAdapter

    return ModbusAdapter.model_validate(
        {
            "name": "bench",
            "protocol": "modbus",
            "devices": [
                {
                    "name": "plc",
                    "transport": "tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "poll_ms": 10,
                    "timeout_ms": 2000,
                    "tags": [
                        {"name": f"t{i}", "table": "holding", "address": i, "type": "uint16", "publish": "every_poll"}
                        for i in range(tags)
                    ],
                }
            ],
        }
    )


async def run_adapter(port: int, tags: int, seconds: float) -> Run:
    from adapters.base.change_filter import ChangeFilter
    from adapters.base.tag import Point, TagValue
    from adapters.modbus.register_map import build_register_map
    from adapters.modbus.scheduler import Buses

    config = adapter_config(port, tags)
    changes = ChangeFilter()
    delivered = 0

    def sink(point: Point, reading: TagValue) -> None:
        nonlocal delivered
        delivered += 1
        if changes.admit(point, reading):
            reading.payload(point.units)

    buses = Buses(config.name, build_register_map(config, REPO), sink)
    for device in buses.schedulers[0].devices:
        for block in device.blocks:
            block.period_s = SATURATE_PERIOD_S
    task = asyncio.create_task(buses.run())
    while delivered < tags:  # connected and one full poll done: start measuring from here
        await asyncio.sleep(0.01)
    requests0, delivered0 = buses.schedulers[0].requests, delivered
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    run = Run(buses.schedulers[0].requests - requests0, delivered - delivered0, wall, cpu)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return run


async def run_bare(port: int, tags: int, seconds: float) -> Run:
    """The baseline: one pymodbus client reading the same 125-register blocks back to back."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)
    await client.connect()
    blocks = [(start, min(125, tags - start)) for start in range(0, tags, 125)]
    requests = registers = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    deadline = wall0 + seconds
    while time.perf_counter() < deadline:
        for start, count in blocks:
            response = await client.read_holding_registers(start, count=count, device_id=1)
            requests += 1
            registers += len(response.registers)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    client.close()
    return Run(requests, registers, wall, cpu)


def measure(tag_counts: tuple[int, ...], seconds: float) -> dict[int, tuple[Run, Run]]:
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    found = {}
    with simulator_process() as port:
        for tags in tag_counts:
            bare = asyncio.run(run_bare(port, tags, seconds))
            adapter = asyncio.run(run_adapter(port, tags, seconds))
            found[tags] = (adapter, bare)
    return found


def record_figures(found: dict[int, tuple[Run, Run]]) -> dict[str, dict[str, object]]:
    """Each figure through tests/bench/results.py, the one writer of bench/results.json."""
    from tests.bench import results

    out: dict[str, dict[str, object]] = {}
    for tags, (adapter, bare) in sorted(found.items()):
        suffix = "" if tags == 1000 else f"_{tags // 1000}k" if tags % 1000 == 0 else f"_{tags}"
        note = f"{tags} uint16 tags, one TCP device, polled back to back; baseline: bare pymodbus client loop"
        out[f"modbus_registers_per_s{suffix}"] = results.record(
            f"modbus_registers_per_s{suffix}", adapter.registers_per_s, "registers/s", bare.registers_per_s, note
        )
        out[f"modbus_requests_per_s{suffix}"] = results.record(
            f"modbus_requests_per_s{suffix}", adapter.requests_per_s, "requests/s", bare.requests_per_s, note
        )
        out[f"modbus_cpu_pct_per_1000_tags_per_s{suffix}"] = results.record(
            f"modbus_cpu_pct_per_1000_tags_per_s{suffix}",
            adapter.cpu_pct_per_1000_per_s,
            "% core",
            bare.cpu_pct_per_1000_per_s,
            "percent of one core per 1,000 tag values/s (lower is better); adapter includes decode, change "
            "filter and JSON rendering of every value; baseline: bare loop per 1,000 registers/s",
        )
    return out


def table(found: dict[int, tuple[Run, Run]]) -> str:
    lines = [
        f"{'tags':>6} {'side':<8} {'registers/s':>12} {'requests/s':>11} {'cpu %':>7} {'cpu % per 1k/s':>15}",
    ]
    for tags, runs in sorted(found.items()):
        for side, run in zip(("adapter", "bare"), runs, strict=True):
            lines.append(
                f"{tags:>6} {side:<8} {run.registers_per_s:>12,.0f} {run.requests_per_s:>11,.0f} "
                f"{100 * run.cpu_s / run.wall_s:>7.1f} {run.cpu_pct_per_1000_per_s:>15.2f}"
            )
    return "\n".join(lines)


def run(tag_counts: tuple[int, ...] = (1000, 10000), seconds: float = 5.0) -> dict[str, dict[str, object]]:
    found = measure(tag_counts, seconds)
    print(table(found))
    return record_figures(found)


@pytest.mark.bench
def test_bench_modbus() -> None:
    figures = run()
    assert all(f["value"] for f in figures.values())


def test_bench_modbus_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tiny N so the benchmark code stays working; its figures go to a scratch file."""
    import tests.bench.results as results

    monkeypatch.setattr(results, "RESULTS", tmp_path / "results.json")
    figures = run(tag_counts=(250,), seconds=0.3)
    assert set(figures) == {
        "modbus_registers_per_s_250",
        "modbus_requests_per_s_250",
        "modbus_cpu_pct_per_1000_tags_per_s_250",
    }
    assert all(f["value"] and f["baseline"] for f in figures.values())


if __name__ == "__main__":
    run()
