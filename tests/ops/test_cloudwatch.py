"""CloudWatch Logs shipping: batches under PutLogEvents' limits, a capped buffer, and a real gateway's
logs arriving in moto's server, including lines logged while it was down and lines buffered by a
logship that was killed before CloudWatch came back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer

from gateway.cloudwatch_batch import (
    EVENT_OVERHEAD,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_SPAN_MS,
    MAX_EVENT_BYTES,
    EventBuffer,
    LogEvent,
    batches,
    clip,
)
from gateway.cloudwatch_ship import stream_name
from gateway.log_files import log_sources
from tests.fixtures.gateway import HeldPort, RunningGateway, free_port, wait_until

events = st.lists(st.tuples(st.integers(0, 3 * 86_400_000), st.text(min_size=1, max_size=40_000)), max_size=120).map(
    lambda pairs: [LogEvent(t, clip(m)) for t, m in sorted(pairs, key=lambda p: p[0])]
)


@settings(max_examples=60, deadline=None)
@given(events)
def test_batches_keep_every_event_in_order_and_fit_putlogevents_limits(found: list[LogEvent]) -> None:
    split = batches(found)
    assert [e for batch in split for e in batch] == found
    for batch in split:
        assert 1 <= len(batch) <= MAX_BATCH_EVENTS
        assert sum(e.size for e in batch) <= MAX_BATCH_BYTES
        assert batch[-1].timestamp_ms - batch[0].timestamp_ms <= MAX_BATCH_SPAN_MS


def test_batches_split_at_ten_thousand_events_and_one_mebibyte() -> None:
    many = [LogEvent(1, "x") for _ in range(25_000)]
    assert [len(b) for b in batches(many)] == [10_000, 10_000, 5_000]
    big = [LogEvent(1, "y" * (100_000 - EVENT_OVERHEAD)) for _ in range(25)]
    assert [len(b) for b in batches(big)] == [10, 10, 5]
    assert len(clip("z" * 300_000).encode()) <= MAX_EVENT_BYTES


def test_full_buffer_drops_the_oldest_lines_and_counts_them() -> None:
    buffer = EventBuffer(max_bytes=10 * (EVENT_OVERHEAD + 10))
    for i in range(15):
        buffer.add("system/core" if i % 2 else "system/uplink", LogEvent(1000 + i, f"line {i:05d}"))
    assert buffer.dropped == 5
    kept = sorted(e.message for q in buffer.pending().values() for e in q)
    assert kept == [f"line {i:05d}" for i in range(5, 15)]
    buffer.acknowledge("system/core", 2)
    assert len(buffer) == 8


@pytest.fixture
def moto_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield free_port()


def _messages(port: int, group: str, stream: str) -> list[str]:
    logs = boto3.client("logs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    try:
        answer = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True, limit=10_000)
    except logs.exceptions.ResourceNotFoundException:
        return []
    return [e["message"] for e in answer["events"]]


GATEWAY = """
[gateway]
thing_name = "cw-gw"
status_interval_s = 0.5

[logging.cloudwatch]
endpoint_url = "http://127.0.0.1:{port}"
region = "us-east-1"
flush_interval_s = 0.5
"""


def test_logs_reach_cloudwatch_and_lines_from_an_outage_follow_when_it_is_back(gateway_factory, moto_port) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    try:
        gw = gateway_factory(GATEWAY.format(port=moto_port), expect=("broker", "core", "logship"))
        group = "/millgate/cw-gw"
        wait_until(
            lambda: any("event=starting" in m for m in _messages(moto_port, group, "system/core")),
            20,
            "the core's start-up lines in CloudWatch",
            interval_s=0.3,
        )
        before = f"before-{uuid.uuid4().hex[:8]}"
        gw.client("operator", before)
        wait_until(
            lambda: any(before in m for m in _messages(moto_port, group, "system/broker")),
            20,
            "a broker line",
            interval_s=0.3,
        )

        server.stop()  # the outage: moto's state is gone with it, as if the group had been deleted
        during = [f"during-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for client_id in during:
            gw.client("operator", client_id)
        time.sleep(2.0)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        server.start()
        wait_until(
            lambda: all(any(i in m for m in _messages(moto_port, group, "system/broker")) for i in during),
            30,
            "the lines logged during the outage",
            interval_s=0.5,
        )
        shipped = gw.cli("logs", "logship").stdout
        assert "event=cloudwatch-unreachable" in shipped and "event=cloudwatch-ok" in shipped
    finally:
        server.stop()


def _kill_logship(gw: RunningGateway) -> None:
    """kill -9 the logship process and wait for supervisord to have a new one running."""
    old = gw.status()["processes"]["logship"]["pid"]
    os.kill(old, signal.SIGKILL)

    def replaced() -> bool:
        found = gw.status()["processes"]["logship"]
        return found["state"] == "RUNNING" and found["pid"] not in (old, 0, None)

    wait_until(replaced, 20, "supervisord to restart logship", interval_s=0.2)


def test_lines_buffered_in_an_outage_arrive_exactly_once_after_logship_is_killed(gateway_factory, moto_port) -> None:
    # CloudWatch is unreachable from the start: nothing listens on moto_port until the end
    # a group of its own: moto's servers in one test process share their state
    held = HeldPort(moto_port)
    gateway_toml = GATEWAY.format(port=moto_port).replace('"cw-gw"', '"cw-gw-restarts"')
    gw = gateway_factory(gateway_toml, expect=("broker", "core", "logship"))
    group = "/millgate/cw-gw-restarts"
    marker = gw.paths.log_dir / "system" / "logship.log"
    wait_until(lambda: "event=cloudwatch-unreachable" in marker.read_text(), 20, "logship to see the outage")
    logged = gw.paths.log_dir / "system" / "broker.log"
    for round_ in range(2):
        ids = [f"outage{round_}-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for client_id in ids:
            gw.client("operator", client_id)
        wait_until(lambda ids=ids: all(i in logged.read_text() for i in ids), 10, "the broker to log the clients")
        time.sleep(1.5)  # logship reads them into its buffer (flush_interval_s 0.5), then dies with them
        _kill_logship(gw)

    held.release()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    try:

        def shipped_exactly_once() -> bool:
            for component, source in log_sources(gw.paths.log_dir).items():
                if component == "logship":
                    continue  # logship keeps logging about its own flushes; the others hold still
                lines = Counter(source.path.read_text().splitlines())
                if Counter(_messages(moto_port, group, stream_name(component))) != lines:
                    return False
            return True

        try:
            wait_until(shipped_exactly_once, 45, "every line once in CloudWatch", interval_s=1.0)
        except AssertionError:
            broker = Counter(_messages(moto_port, group, "system/broker"))
            on_disk = Counter((gw.paths.log_dir / "system" / "broker.log").read_text().splitlines())
            raise AssertionError(f"missing {on_disk - broker}, extra {broker - on_disk}") from None
        assert all(f"outage{r}-" in "\n".join(_messages(moto_port, group, "system/broker")) for r in range(2))
    finally:
        server.stop()


def test_logship_logs_at_its_own_level_from_logging_levels(tmp_path: Path, moto_port) -> None:
    config = tmp_path / "etc"
    config.mkdir()
    (config / "gateway.toml").write_text(
        GATEWAY.format(port=moto_port) + '\n[logging]\nlevel = "error"\nlevels = { logship = "info" }\n'
    )
    argv = [sys.executable, "-m", "gateway.cloudwatch_ship", "--config", str(config), "--state", str(tmp_path / "s")]
    output = tmp_path / "logship.out"
    with output.open("wb") as sink:
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # event=starting is an info line: shown only if logship's own level, not the global one, applies
        wait_until(lambda: "event=starting" in output.read_text(), 20, "logship's info line", interval_s=0.1)
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    assert "INFO logship" in output.read_text()
