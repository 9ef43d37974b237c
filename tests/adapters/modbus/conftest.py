"""Fixtures for the Modbus adapter tests: a real pymodbus server (the adapter's simulator) on a free
TCP port or on one end of a socat pty pair, run in its own thread and always stopped afterwards, and
a harness that runs the adapter's bus schedulers in-process and records what they hand out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base.change_filter import ChangeFilter
from adapters.base.tag import Point, Quality, TagValue
from adapters.modbus.register_map import build_register_map
from adapters.modbus.scheduler import Buses
from adapters.modbus.simulator import Simulator
from gateway.adapter_config import ModbusAdapter
from tests.fixtures.gateway import HeldPort, free_port


class SimulatorThread:
    """A Simulator served from its own event loop thread, steered with plain calls."""

    def __init__(self, units: tuple[int, ...] = (0,)):
        self.sim = Simulator(units)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port: int | None = None
        self.serial: str | None = None
        self.held: HeldPort | None = None  # the TCP port while stopped: the adapter cannot take it for itself

    def call(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start_tcp(self, port: int | None = None) -> int:
        self.port = port or self.port or free_port()
        self._release_port()
        self.call(self.sim.start_tcp("127.0.0.1", self.port))
        return self.port

    def start_serial(self, path: str, baudrate: int = 19200) -> None:
        self.serial = path
        self.call(self.sim.start_serial(path, baudrate))

    def stop_server(self) -> None:
        self.call(self.sim.stop())
        if self.port is not None and self.held is None:
            self.held = HeldPort(self.port)

    def _release_port(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None

    def get(self, table: str, address: int, count: int = 1, unit: int = 1) -> list[Any]:
        return self.call(self.sim.get(table, address, count, unit))

    def set(self, table: str, address: int, values: list[Any], unit: int = 1) -> None:
        self.call(self.sim.set_direct(table, address, values, unit))

    def close(self) -> None:
        try:
            self.call(self.sim.stop())
        finally:
            self._release_port()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorThread]]:
    """factory(units=(0,)) -> a SimulatorThread, not yet serving; every one made is stopped afterwards."""
    made: list[SimulatorThread] = []

    def factory(units: tuple[int, ...] = (0,)) -> SimulatorThread:
        made.append(SimulatorThread(units))
        return made[-1]

    yield factory
    for sim in made:
        sim.close()


@pytest.fixture
def pty_pair(short_tmp: Path) -> Iterator[tuple[str, str]]:
    """Two linked serial ports made by socat: whatever is written to one is read from the other."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    a, b = short_tmp / "ttyA", short_tmp / "ttyB"
    process = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError("socat did not create the pty pair")
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        process.terminate()
        process.wait(5)


class Recorder:
    """The sink the schedulers feed: every reading per tag key, in order."""

    def __init__(self) -> None:
        self.readings: dict[str, list[TagValue]] = defaultdict(list)
        self.points: dict[str, Point] = {}

    def __call__(self, point: Point, reading: TagValue) -> None:
        self.points[point.key] = point
        self.readings[point.key].append(reading)

    def latest(self, key: str) -> TagValue | None:
        found = self.readings.get(key)
        return found[-1] if found else None

    def value(self, key: str) -> Any:
        latest = self.latest(key)
        return None if latest is None else latest.value

    def good(self, *keys: str) -> bool:
        return all((r := self.latest(k)) is not None and r.quality == Quality.GOOD for k in keys)

    def bad(self, key: str, containing: str = "") -> bool:
        latest = self.latest(key)
        return latest is not None and latest.quality == Quality.BAD and containing in (latest.reason or "")


def strict_json(payload: bytes) -> dict[str, Any]:
    """A payload parsed as JSON proper: NaN, Infinity and -Infinity are not JSON and fail here."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in a published payload is not JSON: {payload!r}")

    return json.loads(payload, parse_constant=refuse)


class Publications(Recorder):
    """A Recorder that also keeps what the adapter publishes: each reading the change filter (the
    Publisher's own) admits, as its payload parsed strictly."""

    def __init__(self) -> None:
        super().__init__()
        self.filter = ChangeFilter()
        self.published: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def __call__(self, point: Point, reading: TagValue) -> None:
        super().__call__(point, reading)
        if self.filter.admit(point, reading):
            self.published[point.key].append(strict_json(reading.payload(point.units)))

    def values(self, key: str) -> list[Any]:
        return [body["value"] for body in self.published[key]]


def adapter_from_toml(text: str) -> ModbusAdapter:
    return ModbusAdapter.model_validate(tomllib.loads(text))


class Harness:
    """Runs an adapter's bus schedulers in the test's event loop."""

    def __init__(self, text: str, adapter_dir: Path = Path("."), sink: Callable[[Point, TagValue], None] | None = None):
        self.config = adapter_from_toml(text)
        self.recorder = sink if isinstance(sink, Recorder) else Recorder()
        device_maps = build_register_map(self.config, adapter_dir)
        self.buses = Buses(self.config.name, device_maps, sink or self.recorder)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self._task = asyncio.create_task(self.buses.run())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def point(self, key: str) -> Point:
        [found] = [p for p in self.buses.points if p.key == key]
        return found

    async def write(self, key: str, value: Any, timeout_s: float = 5) -> Any:
        async with asyncio.timeout(timeout_s):
            return await self.buses.submit_write(self.point(key), value)


async def eventually(predicate: Callable[[], object], timeout_s: float = 5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def harness() -> type[Harness]:
    return Harness
