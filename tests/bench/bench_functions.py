"""Function runtime benchmarks: warm invoke round trip (p50/p99) next to a bare MQTT request/reply through
the same broker, the invoke overhead, cold start next to a bare interpreter start, and sustained
throughput of an on-demand function at concurrency 1 and 4 next to a bare MQTT echo.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.bench.results import record
from tests.fixtures.gateway import RunningGateway, start_gateway, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="function workers run under other uids: needs root")

ECHO = "def function_handler(event, context):\n    return event\n"
GATEWAY = """
[gateway]
thing_name = "bench-fn"
status_interval_s = 0.5
{functions}
"""
FUNCTION = """
[[functions]]
name = "{name}"
code = "functions/echo"
handler = "echo.function_handler"
run_as = "1001:1001"
max_concurrency = {concurrency}
idle_s = {idle_s}
queue_size = 100000
"""


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    base = Path("/tmp") / f"mgb{uuid.uuid4().hex[:6]}"
    (base / "etc" / "functions" / "echo").mkdir(parents=True)
    base.chmod(0o755)
    (base / "etc" / "functions" / "echo" / "echo.py").write_text(ECHO)
    functions = "".join(
        FUNCTION.format(name=n, concurrency=c, idle_s=i)
        for n, c, i in (("echo1", 1, 600), ("echo4", 4, 600), ("cold", 1, 0.2))
    )
    (base / "etc" / "gateway.toml").write_text(GATEWAY.format(functions=functions))
    running = start_gateway(base / "etc", base / "s")
    yield running
    running.stop()
    running.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)


class Requester:
    """Publishes requests with MQTT 5 response topics and collects replies, pipelined."""

    def __init__(self, gw: RunningGateway):
        self.client = gw.client("operator")
        self.prefix = f"millgate/fn/bench/reply/{uuid.uuid4().hex}"  # where function pools may answer
        self.arrived: dict[str, float] = {}
        self.all_in = threading.Event()
        self.expected = 0
        self.client.on_message = self._on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(f"{self.prefix}/#", qos=1)
        assert done.wait(5)

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        self.arrived[message.topic] = time.perf_counter()
        if len(self.arrived) >= self.expected:
            self.all_in.set()

    def send(self, topic: str, payload: bytes) -> tuple[str, float]:
        reply = f"{self.prefix}/{uuid.uuid4().hex}"
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = reply
        sent = time.perf_counter()
        self.client.publish(topic, payload, qos=1, properties=properties)
        return reply, sent

    def round_trips_ms(self, topic: str, count: int) -> list[float]:
        """Sequential request/reply: one outstanding at a time."""
        times = []
        for _ in range(count):
            self.expected = len(self.arrived) + 1
            self.all_in.clear()
            reply, sent = self.send(topic, b'{"n": 1}')
            assert self.all_in.wait(10), f"no reply on {reply}"
            times.append((self.arrived[reply] - sent) * 1000)
        return times

    def throughput(self, topic: str, count: int) -> float:
        """Pipelined: all requests out, then wait for every reply; replies per second."""
        self.expected = len(self.arrived) + count
        self.all_in.clear()
        started = time.perf_counter()
        for _ in range(count):
            self.send(topic, b'{"n": 1}')
        assert self.all_in.wait(120), f"{len(self.arrived)} of {self.expected} replies"
        return count / (time.perf_counter() - started)


class BareEcho:
    """The raw baseline: a plain paho client answering every request on its response topic."""

    def __init__(self, gw: RunningGateway):
        self.client = gw.client("operator")
        self.client.on_message = self._on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe("bench/bare", qos=1)
        assert done.wait(5)

    def _on_message(self, client: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        client.publish(message.properties.ResponseTopic, message.payload, qos=1)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def _cold_start_ms(gw: RunningGateway, requester: Requester, samples: int) -> float:
    times = []
    for _ in range(samples):
        wait_until(
            lambda: gw.status()["components"].get("fn-cold", {}).get("workers") == 0,
            20,
            "the cold function's worker to be stopped",
            interval_s=0.2,
        )
        times.extend(requester.round_trips_ms("millgate/fn/cold/invoke", 1))
    return statistics.median(times)


def _bare_interpreter_ms(samples: int) -> float:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import functions.sdk"], check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run_function_benchmarks(gw: RunningGateway, round_trips: int, pipelined: int, cold_samples: int) -> dict:
    requester = Requester(gw)
    BareEcho(gw)
    requester.round_trips_ms("millgate/fn/echo1/invoke", 5)  # warm the worker
    requester.round_trips_ms("bench/bare", 5)
    warm = requester.round_trips_ms("millgate/fn/echo1/invoke", round_trips)
    bare = requester.round_trips_ms("bench/bare", round_trips)
    figures = {
        "invoke_warm_p50_ms": record("invoke_warm_p50_ms", _percentile(warm, 0.5), "ms", _percentile(bare, 0.5)),
        "invoke_warm_p99_ms": record("invoke_warm_p99_ms", _percentile(warm, 0.99), "ms", _percentile(bare, 0.99)),
        "invoke_overhead_p50_ms": record(
            "invoke_overhead_p50_ms",
            _percentile(warm, 0.5) - _percentile(bare, 0.5),
            "ms",
            None,
            "warm invoke p50 minus bare MQTT request/reply p50",
        ),
    }
    bare_rate = requester.throughput("bench/bare", pipelined)
    for name in ("echo1", "echo4"):
        requester.throughput(f"millgate/fn/{name}/invoke", 40)  # bring the pool up to its size first
        rate = requester.throughput(f"millgate/fn/{name}/invoke", pipelined)
        concurrency = name[-1]
        figures[f"invoke_throughput_c{concurrency}"] = record(
            f"invoke_throughput_c{concurrency}_per_s", rate, "inv/s", bare_rate
        )
    figures["cold_start_ms"] = record(
        "cold_start_ms",
        _cold_start_ms(gw, requester, cold_samples),
        "ms",
        _bare_interpreter_ms(cold_samples),
        "first invoke with no worker vs a bare interpreter start importing the SDK",
    )
    return figures


def test_function_benchmarks_smoke(gw: RunningGateway) -> None:
    figures = run_function_benchmarks(gw, round_trips=10, pipelined=20, cold_samples=1)
    assert figures["invoke_warm_p50_ms"]["value"] > 0
    assert figures["invoke_throughput_c4"]["value"] > 0


@pytest.mark.bench
def test_function_benchmarks_full(gw: RunningGateway) -> None:
    figures = run_function_benchmarks(gw, round_trips=500, pipelined=2000, cold_samples=5)
    print(json.dumps(figures, indent=2))
