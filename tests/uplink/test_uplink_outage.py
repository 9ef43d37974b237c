"""The issue's outage scenarios: the cloud line down for 100,000 messages then back, and the uplink
killed with SIGKILL every few hundred milliseconds under load."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from gateway.status import supervisor_proxy
from tests.fixtures.gateway import REPO, wait_until
from tests.uplink.conftest import CloudBroker, LinkProxy, local_publisher, publish_many
from tests.uplink.test_uplink_drain import GATEWAY, uplink_status

TOPICS = 10


def per_topic(messages: list[tuple[str, bytes]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic, payload in messages:
        out.setdefault(topic, []).append(int(payload))
    return out


@pytest.mark.slow
def test_cloud_down_for_100k_messages_then_all_arrive_in_order_alarms_first(
    uplink_gateway, cloud_broker: CloudBroker, link_proxy: LinkProxy
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    rules = '\n[[spool.topics]]\nprefix = "plant/alarms/"\npriority = 10\n'
    gw = uplink_gateway(GATEWAY + rules + cloud_broker.toml(port=link_proxy.port))
    sent = [(f"plant/line{i % TOPICS}/t", str(i).encode()) for i in range(100_000)]
    alarms = [("plant/alarms/press", str(i).encode()) for i in range(10)]
    started = time.monotonic()
    publish_many(local_publisher(gw), sent + alarms, timeout_s=120)
    wait_until(lambda: uplink_status(gw)["spool"]["messages"] == 100_010, 30, "everything spooled", interval_s=0.2)
    spooled_at = time.monotonic()
    assert len(cloud) == 0
    assert uplink_status(gw)["cloud"]["connected"] is False

    link_proxy.up()
    wait_until(lambda: len(cloud) >= 100_010, 60, "the backlog in the cloud", interval_s=0.2)
    drained_at = time.monotonic()
    got = cloud.snapshot()
    assert got[:10] == alarms, "the alarms drain before the telemetry"
    assert len(got) == 100_010, "no duplicates without a reconnect"
    assert per_topic(got) == per_topic(sent + alarms)
    wait_until(lambda: uplink_status(gw)["spool"]["messages"] == 0, 10, "an empty spool", interval_s=0.2)
    print(f"spooled 100k in {spooled_at - started:.1f} s, drained in {drained_at - spooled_at:.1f} s")


def run_uplink(gw, log) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.uplink", "--config", str(gw.config_dir), "--state", str(gw.state_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def test_nothing_acknowledged_is_lost_when_the_uplink_is_killed_repeatedly(
    uplink_gateway, cloud_broker: CloudBroker
) -> None:
    cloud_broker.start()
    cloud = cloud_broker.subscriber("plant/#")
    gw = uplink_gateway(GATEWAY + cloud_broker.toml())
    supervisor_proxy(gw.paths).supervisor.stopProcess("uplink")  # this test runs (and kills) its own
    sent = [(f"plant/line{i % TOPICS}/t", str(i).encode()) for i in range(20_000)]
    publisher = local_publisher(gw)
    published = threading.Thread(target=publish_many, args=(publisher, sent, 60))
    rng = random.Random(5)
    kills = 0
    with (gw.state_dir / "uplink-under-test.log").open("ab") as log:
        published.start()
        while published.is_alive() or kills < 10:
            uplink = run_uplink(gw, log)
            time.sleep(rng.uniform(0.3, 0.8))
            os.kill(uplink.pid, signal.SIGKILL)
            uplink.wait()
            kills += 1
        published.join()
        received_before_last = len(cloud)
        uplink = run_uplink(gw, log)
        try:
            wait_until(lambda: len(set(cloud.snapshot())) >= len(sent), 60, "every message in the cloud")
        finally:
            uplink.send_signal(signal.SIGTERM)
            uplink.wait(10)
    got = cloud.snapshot()
    assert set(got) == set(sent), "every message the local broker acknowledged reached the cloud"
    for topic, numbers in per_topic(got).items():
        first_seen = list(dict.fromkeys(numbers))
        assert first_seen == sorted(first_seen), f"{topic}: first deliveries out of order"
    print(f"kills={kills} delivered={len(got)} duplicates={len(got) - len(sent)} before_last={received_before_last}")
