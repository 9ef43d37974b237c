"""Spool and drain throughput, each next to a raw baseline measured in the same run:

- spool_append_msgs_per_s: Spool.append (durable: WAL, fsync per commit, 1,000 messages per commit,
  caps, priorities and counters) vs bare sqlite3 executemany into a two-column table with the same
  journal, sync and batch size.
- drain_msgs_per_s: the uplink's Drain + CloudLink emptying a filled spool into a local mosquitto over
  TLS with client certificates (QoS 1, window 100, delete on PUBACK) vs a bare paho QoS 1 publisher
  with the same window over the same TLS listener.

Run: `make bench` (pytest tests/bench -m bench -s); the unmarked smoke test runs tiny N by default.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import ssl
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.config import CloudSection
from gateway.storage_thread import StorageThread
from gateway.uplink.cloud_link import CloudLink
from gateway.uplink.drain import Drain
from gateway.uplink.metrics import UplinkMetrics
from storage.spool import Message, Spool
from tests.bench.results import record
from tests.uplink.conftest import CloudBroker, Pki, free_port, make_pki

BATCH = 1000
WINDOW = 100
PAYLOAD = b'{"value": 21.53, "quality": "good", "ts": 1732512345.123}'


def messages(n: int) -> list[Message]:
    return [Message(f"plant/line{i % 10}/press/temperature", PAYLOAD) for i in range(n)]


def append_spool(path: Path, n: int) -> float:
    spool = Spool(path)
    batch = messages(BATCH)
    started = time.perf_counter()
    for _ in range(n // BATCH):
        spool.append(batch)
    elapsed = time.perf_counter() - started
    spool.close()
    return n / elapsed


def append_raw(path: Path, n: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
    rows = [(m.topic, m.payload) for m in messages(BATCH)]
    started = time.perf_counter()
    for _ in range(n // BATCH):
        db.execute("BEGIN")
        db.executemany("INSERT INTO m (topic, payload) VALUES (?, ?)", rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed


def cloud_section(broker: CloudBroker) -> CloudSection:
    return CloudSection.model_validate(
        {
            "endpoint": "localhost",
            "port": broker.port,
            "ca_file": str(broker.pki.ca),
            "cert_file": str(broker.pki.client_cert),
            "key_file": str(broker.pki.client_key),
            "inflight_window": WINDOW,
        }
    )


async def _drain(spool: Spool, storage: StorageThread, cloud: CloudSection, n: int) -> float:
    stop = asyncio.Event()
    link = CloudLink(cloud, "bench-drain")
    drain = Drain(spool, storage, link, UplinkMetrics(), asyncio.Event(), window=WINDOW, dead_after=5)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(link.run(stop))
        await link.connected_event.wait()
        started = time.perf_counter()
        worker = tasks.create_task(drain.run())
        while spool.depth[0] > 0:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        worker.cancel()
        stop.set()
    return n / elapsed


def drain_spool(path: Path, broker: CloudBroker, n: int) -> float:
    storage = StorageThread()
    spool = storage.run(Spool, path, durable=True)
    for start in range(0, n, BATCH):
        storage.run(spool.append, messages(min(BATCH, n - start)))
    try:
        return asyncio.run(_drain(spool, storage, cloud_section(broker), n))
    finally:
        storage.run(spool.close)
        storage.close()


def publish_raw(pki: Pki, broker: CloudBroker, n: int) -> float:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    client.tls_set_context(context)
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    done = threading.Event()
    acked = 0

    def on_publish(*_args: object) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    client.on_publish = on_publish
    client.connect("localhost", broker.port)
    client.loop_start()
    rows = [(m.topic, m.payload) for m in messages(n)]
    started = time.perf_counter()
    for sent, (topic, payload) in enumerate(rows):
        while sent - acked >= 50_000:  # 16-bit message ids
            time.sleep(0.001)
        client.publish(topic, payload, qos=1)
    assert done.wait(120), f"only {acked}/{n} PUBACKs"
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return n / elapsed


def run(n_append: int, n_drain: int) -> dict[str, dict[str, object]]:
    root = Path(tempfile.mkdtemp(prefix="mgbench", dir="/tmp"))
    root.chmod(0o755)  # mosquitto may drop to its own user
    broker: CloudBroker | None = None
    try:
        spool_rate = append_spool(root / "spool.db", n_append)
        raw_rate = append_raw(root / "raw.db", n_append)
        pki = make_pki(root / "pki")
        (root / "cloud").mkdir()
        broker = CloudBroker(pki, root / "cloud", free_port())
        broker.start()
        drain_rate = drain_spool(root / "drain.db", broker, n_drain)
        bare_rate = publish_raw(pki, broker, n_drain)
        print(f"\n{'figure':<32} {'value':>12} {'unit':<10} {'baseline':>21}  ratio")
        return {
            "spool_append_msgs_per_s": record(
                "spool_append_msgs_per_s",
                spool_rate,
                "msg/s",
                raw_rate,
                f"durable (WAL, synchronous=FULL), {BATCH} per commit, {len(PAYLOAD)} B payloads, n={n_append}; "
                "baseline: bare sqlite3 executemany, same pragmas and batch",
            ),
            "drain_msgs_per_s": record(
                "drain_msgs_per_s",
                drain_rate,
                "msg/s",
                bare_rate,
                f"spool -> mosquitto over TLS (client certs), QoS 1, window {WINDOW}, delete on PUBACK, n={n_drain}; "
                "baseline: bare paho QoS 1 publisher, same window and listener",
            ),
        }
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.bench
def test_bench_spool_and_drain() -> None:
    figures = run(n_append=200_000, n_drain=50_000)
    assert all(f["value"] for f in figures.values())


def test_bench_spool_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tiny N so the benchmark code stays working; its figures go to a scratch file."""
    import tests.bench.results as results

    monkeypatch.setattr(results, "RESULTS", tmp_path / "results.json")
    figures = run(n_append=2_000, n_drain=500)
    assert set(figures) == {"spool_append_msgs_per_s", "drain_msgs_per_s"}


if __name__ == "__main__":
    run(n_append=200_000, n_drain=50_000)
