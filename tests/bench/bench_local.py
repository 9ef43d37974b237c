"""local_msgs_per_s: sustained messages/s through the whole local path with zero loss: a Modbus adapter
polling clock tags on the simulated press -> a long-lived relay function -> the uplink (durable spool)
-> the cloud broker over TLS. Offered rates climb a ladder; the figure is the highest delivered rate of
a step where every value the adapter published reached the cloud.

Baseline, same run: mosquitto with bare paho clients over the same hops' count of broker passes
(publisher -> broker -> relay client -> broker -> subscriber), QoS 1 throughout. gmqtt, the fastest bare
Python client, is not used: its wheel installs a top-level `tests` package that shadows this
repository's tests/ (a namespace package), which breaks every `from tests.fixtures...` import.
Run: `make bench`; the unmarked smoke runs one low step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.credentials import load_credentials
from gateway.demo_cloud import DemoCloud, make_cloud_pki
from gateway.mqtt_blocking import connect_blocking, paho_client
from tests.bench.bench_reference import CloudWatcher, Heartbeats
from tests.bench.results import record
from tests.fixtures.gateway import REPO, RunningGateway, free_port, start_gateway, wait_until

RELAY = """from functions import sdk


def function_handler(event, context):
    sdk.publish("relayed/" + context.client_context.custom["subject"], event, qos=1)
"""
GATEWAY = """
[gateway]
thing_name = "bench-local"
status_interval_s = 0.5

[cloud]
endpoint = "localhost"
port = {cloud}
ca_file = "certs/cloud-ca.pem"
cert_file = "certs/thing.pem.crt"
key_file = "certs/thing.pem.key"

[[functions]]
name = "relay"
code = "functions/relay"
handler = "relay.function_handler"
lifecycle = "long-lived"
run_as = "1001:1001"
queue_size = 4096             # the most a long-lived runner holds (functions/pinned.py MAX_QUEUED)

[[subscriptions]]
source = "adapter:line1"
target = "function:relay"
topic = "line1/#"

[[subscriptions]]
source = "function:relay"
target = "cloud"
topic = "relayed/#"
"""
ADAPTER = """
name = "line1"
protocol = "modbus"
qos = 1

[[devices]]
name = "press"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_ms = 100
backoff_max_ms = 500
tags_csv = "clock.csv"
"""


class LocalPath:
    def __init__(self, root: Path, tags: int):
        self.root, self.tags = root, tags
        self.config = root / "etc"
        (self.config / "functions" / "relay").mkdir(parents=True)
        (self.config / "adapters").mkdir()
        root.chmod(0o755)
        (self.config / "functions" / "relay" / "relay.py").write_text(RELAY)
        self.modbus_port, cloud_port = free_port(), free_port()
        (self.config / "gateway.toml").write_text(GATEWAY.format(cloud=cloud_port))
        (self.config / "adapters" / "line1.toml").write_text(ADAPTER.format(port=self.modbus_port))
        rows = ["name,table,address,type"] + [f"clock_{i:04d},holding,{1000 + 2 * i},uint32" for i in range(tags)]
        (self.config / "adapters" / "clock.csv").write_text("\n".join(rows) + "\n")
        self.cloud = DemoCloud(make_cloud_pki(self.config / "certs", "bench-local"), root / "cloud", cloud_port)
        self.cloud.workdir.mkdir()
        self.cloud.start()
        self.simulator: Any = None
        self.gw: RunningGateway | None = None

    def start_simulator(self, rate: float) -> None:
        import subprocess

        self.stop_simulator()
        argv = [sys.executable, "-m", "adapters.modbus.simulator", "--port", str(self.modbus_port)]
        if rate:
            argv += ["--clock-tags", str(self.tags), "--clock-rate", str(rate)]
        self.simulator = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop_simulator(self) -> None:
        if self.simulator is not None:
            self.simulator.terminate()
            self.simulator.wait(10)
            self.simulator = None

    def stop(self) -> None:
        self.stop_simulator()
        if self.gw is not None:
            self.gw.stop()
            self.gw.kill_leftovers()
        self.cloud.stop()


class AdapterCounter:
    """Counts what the adapter published, at the broker: a QoS 1 operator subscription to its topics.
    Exact, unlike the adapter's heartbeat counter, which is a heartbeat behind and starts again at 0
    whenever the adapter restarts (a step's `published` once read negative)."""

    def __init__(self, gw: RunningGateway, topic_filter: str = "line1/#"):
        creds = load_credentials(gw.paths.credentials_dir, "operator")
        self.client = paho_client(creds, f"bench-count-{uuid.uuid4().hex[:6]}")
        self.count = 0
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        connect_blocking(self.client, gw.paths.broker_socket)
        self.client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(5), "the counter's subscription"

    def _on_message(self, _c: object, _u: object, _m: object) -> None:
        with self.lock:
            self.count += 1

    def settled(self, quiet_s: float = 1.0, timeout_s: float = 30) -> int:
        """The count once nothing more has arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        last = -1
        while last != self.count and time.monotonic() < deadline:
            last = self.count
            time.sleep(quiet_s)
        return self.count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gateway_step(path: LocalPath, counter: AdapterCounter, watcher: CloudWatcher, rate: float, seconds: float) -> dict:
    """Offer `rate` changes/s for `seconds`, stop the press, wait for the path to drain."""
    before_published, before_delivered = counter.settled(), watcher.counts.get("relayed", 0)
    path.start_simulator(rate)
    started = time.monotonic()
    time.sleep(seconds)
    path.stop_simulator()
    published = counter.settled() - before_published

    def drained() -> bool:
        return watcher.counts.get("relayed", 0) - before_delivered >= published

    with contextlib.suppress(AssertionError):  # what never arrives is counted as lost below
        wait_until(drained, max(10, 3 * seconds), "the path to drain", interval_s=0.1)
    with watcher.lock:
        arrivals = list(watcher.arrivals)
    delivered = watcher.counts.get("relayed", 0) - before_delivered
    last = max(arrivals, default=started)
    return {
        "offered": rate,
        "published": published,
        "delivered": delivered,
        "lost": max(published - delivered, 0),
        "rate": delivered / max(last - started, seconds),
    }


def bare_rate(gw: RunningGateway, n: int) -> float:
    """publisher -> mosquitto -> relay -> mosquitto -> subscriber, bare paho, QoS 1, window 1000."""
    creds = load_credentials(gw.paths.credentials_dir, "operator")
    prefix = f"bare/{uuid.uuid4().hex[:6]}"
    got = threading.Event()
    received = [0]

    def client(name: str) -> paho.Client:
        c = paho_client(creds, f"bench-{name}-{uuid.uuid4().hex[:6]}")
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        connect_blocking(c, gw.paths.broker_socket)
        return c

    relay, sink, source = client("relay"), client("sink"), client("source")

    def on_relay(c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        c.publish(f"{prefix}/out/{m.topic}", m.payload, qos=1)

    def on_sink(_c: object, _u: object, _m: object) -> None:
        received[0] += 1
        if received[0] >= n:
            got.set()

    relay.on_message, sink.on_message = on_relay, on_sink
    done = [threading.Event(), threading.Event()]
    relay.on_subscribe = lambda *_: done[0].set()
    sink.on_subscribe = lambda *_: done[1].set()
    relay.subscribe(f"{prefix}/in/#", qos=1)
    sink.subscribe(f"{prefix}/out/#", qos=1)
    assert all(d.wait(5) for d in done)
    payload = b'{"value": 1234567, "quality": "good", "ts": 1732512345.123}'
    started = time.perf_counter()
    for i in range(n):
        info = source.publish(f"{prefix}/in/press/clock_{i % 1000:04d}", payload, qos=1)
        if i % 20_000 == 19_999:
            info.wait_for_publish(30)
    assert got.wait(120), f"bare path delivered {received[0]} of {n}"
    rate = n / (time.perf_counter() - started)
    for c in (relay, sink, source):
        c.disconnect()
        c.loop_stop()
    return rate


def run_local(tags: int, rates: list[float], seconds: float, bare_n: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mgloc", dir="/tmp"))
    path = LocalPath(root, tags)
    try:
        path.start_simulator(0)
        path.gw = start_gateway(
            path.config, root / "s", expect=("broker", "core", "uplink", "fn-relay", "adapter-line1")
        )
        beats = Heartbeats(path.gw.paths)
        counter = AdapterCounter(path.gw)
        watcher = CloudWatcher(path.cloud, topic_filter="relayed/#", keep_arrivals=True)
        watcher.start()
        wait_until(lambda: beats.get("uplink").get("cloud", {}).get("connected"), 20, "the cloud link")
        steps = [gateway_step(path, counter, watcher, rate, seconds) for rate in rates]
        baseline = bare_rate(path.gw, bare_n)
        restarts = {name: p["restarts"] for name, p in path.gw.status()["processes"].items() if p["restarts"]}
        counter.close()
        beats.close()
        watcher.stop()
    finally:
        path.stop()
        if not os.environ.get("MILLGATE_BENCH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
    clean = [s for s in steps if s["lost"] == 0 and s["published"] > 0]
    best = max(clean, key=lambda s: s["rate"]) if clean else {"rate": 0.0}
    ladder = "; ".join(
        f"offered {s['offered']:.0f}/s: {s['delivered']}/{s['published']} at {s['rate']:.0f}/s" for s in steps
    )
    figure = record(
        "local_msgs_per_s",
        best["rate"],
        "msg/s",
        baseline,
        f"Modbus adapter ({tags} clock tags, poll 100 ms) -> long-lived relay function -> uplink spool -> cloud "
        f"broker (TLS), QoS 1, highest zero-loss step of {ladder}; baseline: bare paho publisher -> mosquitto -> "
        f"relay -> mosquitto -> subscriber, QoS 1, n={bare_n}",
    )
    return {"figure": figure, "steps": steps, "restarts": restarts}


@pytest.mark.bench
@pytest.mark.timeout(300)
def test_bench_local() -> None:
    result = run_local(tags=2500, rates=[1000, 2000, 4000, 8000], seconds=10, bare_n=50_000)
    for step in result["steps"]:
        print(step)
    print("restarts during the run:", result["restarts"] or "none")
    assert result["figure"]["value"] > 0


def test_bench_local_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tests.bench.results as results

    monkeypatch.setattr(results, "RESULTS", tmp_path / "results.json")
    result = run_local(tags=100, rates=[200], seconds=2, bare_n=500)
    assert result["steps"][0]["published"] > 0, result
    assert result["figure"]["baseline"] > 0
