"""Shadow sync when the core, not the cloud link, loses the local broker: the uplink relays a cloud change
that no one is subscribed to receive (the core's session is not persistent), so the core must reconcile
every synced shadow once its connection is back. A real gateway (core, uplink, local mosquitto) synced
over TLS with a cloud mosquitto whose responder answers as AWS IoT does (tests/fixtures/aws_shadows.py),
as in tests/uplink/test_shadow_sync_e2e.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.acl import CORE
from gateway.credentials import load_credentials
from gateway.mqtt_blocking import connect_blocking, paho_client
from gateway.shadows.sync import LINK_TOPIC
from gateway.topics import SHADOW_SYNC_DOWN_PREFIX
from tests.fixtures.aws_shadows import AwsCloudBroker, CloudShadows
from tests.fixtures.gateway import RunningGateway, wait_until
from tests.fixtures.shadows import ShadowClient
from tests.uplink.conftest import CloudBroker, free_port, pki, uplink_gateway  # noqa: F401 (fixtures)

SYNC_WAIT_S = 20  # the core's reconnect backoff has grown while its socket was away


@pytest.fixture
def cloud_broker(pki, short_tmp: Path) -> Iterator[CloudBroker]:  # noqa: F811
    broker_dir = short_tmp / "cloud"
    broker_dir.mkdir()
    broker = AwsCloudBroker(pki, broker_dir, free_port())
    yield broker
    broker.stop()


@pytest.fixture
def cloud_shadows(cloud_broker: CloudBroker, short_tmp: Path) -> Iterator[CloudShadows]:
    cloud_broker.start()
    service = CloudShadows(cloud_broker, short_tmp / "aws-shadows.db")
    yield service
    service.close()


class Watcher:
    """The operator's view of what the uplink hands the core: the link state and relayed answers."""

    def __init__(self, gw: RunningGateway):
        self.links: list[dict[str, Any]] = []
        self.relayed: list[str] = []
        self._lock = threading.Lock()
        client = gw.client("operator")
        client.on_message = self._on_message
        client.subscribe([(LINK_TOPIC, 1), (SHADOW_SYNC_DOWN_PREFIX + "#", 1)])

    def _on_message(self, _c: object, _u: object, message: Any) -> None:
        with self._lock:
            if message.topic == LINK_TOPIC:
                self.links.append(json.loads(message.payload))
            else:
                self.relayed.append(message.topic)

    def link_connected(self) -> bool:
        with self._lock:
            return bool(self.links) and self.links[-1]["connected"]

    def relayed_count(self, suffix: str) -> int:
        with self._lock:
            return sum(1 for topic in self.relayed if topic.endswith(suffix))


def take_the_core_off_the_broker(gw: RunningGateway) -> Path:
    """Move the broker's socket aside (connections made stay up, new ones fail) and take over the core's
    session with its own identity and client id, which makes the broker drop the core's connection
    (MQTT 5 session takeover). Returns where the socket is, for `put_the_socket_back`."""
    socket, away = gw.paths.broker_socket, gw.paths.broker_socket.with_name("away.sock")
    socket.rename(away)
    impostor = paho_client(load_credentials(gw.paths.credentials_dir, CORE), CORE)
    connect_blocking(impostor, away)
    impostor.disconnect()
    impostor.loop_stop()
    return away


def test_a_cloud_change_relayed_while_the_core_is_off_the_broker_reaches_the_local_shadow(
    uplink_gateway,  # noqa: F811
    cloud_broker: CloudBroker,
    cloud_shadows: CloudShadows,
) -> None:
    toml = '[gateway]\nthing_name = "test-gw"\nstatus_interval_s = 0.5\n'
    toml += '\n[[shadows]]\nthing = "press-01"\nsync = "both"\n\n' + cloud_broker.toml()
    gw = uplink_gateway(toml)
    watcher = Watcher(gw)
    device = ShadowClient(gw.client("operator"))

    def local_state() -> dict[str, Any] | None:
        try:
            outcome, answer = device.request("press-01", "get")
        except AssertionError:
            return None  # no answer: the core is not back on the broker yet
        return answer["state"].get("desired") if outcome == "accepted" else None

    wait_until(watcher.link_connected, 10, "the uplink to announce the cloud link", interval_s=0.1)
    cloud_shadows.fleet_update("press-01", {"desired": {"speed": 1}})
    wait_until(lambda: local_state() == {"speed": 1}, 10, "the first change to come down", interval_s=0.1)

    core_log = gw.paths.component_log("core")
    disconnects = core_log.read_text().count("component=core event=broker-disconnected")
    away = take_the_core_off_the_broker(gw)
    try:
        wait_until(
            lambda: core_log.read_text().count("component=core event=broker-disconnected") > disconnects,
            10,
            "the core to lose the broker",
            interval_s=0.1,
        )
        documents = watcher.relayed_count("/update/documents")
        # the fleet changes the shadow; the uplink relays it to a broker where the core is not
        cloud_shadows.fleet_update("press-01", {"desired": {"speed": 2}})
        wait_until(lambda: watcher.relayed_count("/update/documents") > documents, 10, "the relay", interval_s=0.05)
    finally:
        away.rename(gw.paths.broker_socket)
    assert watcher.link_connected(), "the cloud link never went down: only the core's connection did"
    wait_until(
        lambda: local_state() == {"speed": 2},
        SYNC_WAIT_S,
        "the cloud change made while the core was away to reach the local shadow",
        interval_s=0.2,
    )
    assert "event=shadow-sync-broker-reconnected" in core_log.read_text()
