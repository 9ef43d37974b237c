"""Fixtures for the OPC-UA adapter tests: the simulator (a real asyncua server) in its own process on
a free port, restartable on the same port and always stopped afterwards, and a harness that runs the
adapter's session in-process and records every reading it hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base.tag import Point, TagValue
from adapters.opcua.event_map import EventBinding, build_event_bindings
from adapters.opcua.node_map import build_bindings
from adapters.opcua.session import OpcuaSession
from adapters.opcua.trust import TrustStore
from gateway.adapter_config import OpcuaAdapter
from tests.fixtures.gateway import HeldPort, free_port

REPO = Path(__file__).resolve().parents[3]


class SimulatorProcess:
    def __init__(self, port: int, extra: list[str]):
        self.port = port
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        # the port while no server runs: the adapter's reconnects cannot take it for themselves
        self.held: HeldPort | None = HeldPort(port)

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 15) -> None:
        self.release_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "adapters.opcua.simulator", "--port", str(self.port), *self.extra],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the OPC-UA simulator did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
            self.held = HeldPort(self.port)
        self.process = None

    def release_port(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None


@pytest.fixture
def opcua_simulator() -> Iterator[Callable[..., SimulatorProcess]]:
    """factory(*args, port=None, start=True) -> a SimulatorProcess; every one made is stopped afterwards."""
    made: list[SimulatorProcess] = []

    def factory(*extra: str, port: int | None = None, start: bool = True) -> SimulatorProcess:
        sim = SimulatorProcess(port or free_port(), list(extra))
        made.append(sim)
        if start:
            sim.start()
        return sim

    yield factory
    for sim in made:
        sim.stop()
        sim.release_port()


def adapter_config(endpoint: str, nodes: list[dict[str, Any]], **extra: Any) -> OpcuaAdapter:
    return OpcuaAdapter.model_validate(
        {"name": "line2", "protocol": "opcua", "endpoint": endpoint, "timeout_ms": 2000, "nodes": nodes, **extra}
    )


class Harness:
    """An OpcuaSession running in the test's loop, with every reading recorded per node name and every
    event per `[[events]]` name."""

    def __init__(self, config: OpcuaAdapter, certificate: Any = None, trust: TrustStore | None = None):
        nodes, methods = build_bindings(config)
        self.readings: dict[str, list[TagValue]] = defaultdict(list)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.session = OpcuaSession(
            config,
            nodes,
            methods,
            self._sink,
            certificate,
            events=build_event_bindings(config),
            event_sink=self._event,
            trust=trust,
        )
        self.session.backoff.cap_s = 1.0
        self.methods = {m.config.name: m for m in methods}
        self.points = {b.config.name: b.point for b in nodes}
        self.task: asyncio.Task[None] | None = None

    def _sink(self, point: Point, reading: TagValue) -> None:
        self.readings[point.name].append(reading)

    def _event(self, source: EventBinding, body: dict[str, Any]) -> None:
        self.events[source.config.name].append(body)

    def latest(self, name: str) -> TagValue | None:
        found = self.readings.get(name)
        return found[-1] if found else None

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 10, what: str = "") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {dict(self.readings)}")
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.session.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
