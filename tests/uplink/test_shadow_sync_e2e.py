"""Shadow sync end to end: a real gateway (core's sync engine, uplink's relay, local mosquitto) synced
over TLS with a cloud mosquitto on which a responder answers the shadow topics as AWS IoT would (the
shadow handler's own rules over a separate store), live and through a cut line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.shadows.sync import LINK_TOPIC
from tests.fixtures.aws_shadows import LOSE_ANSWER, AwsCloudBroker, CloudShadows
from tests.fixtures.gateway import RunningGateway, wait_until
from tests.fixtures.shadows import ShadowClient
from tests.uplink.conftest import CloudBroker, LinkProxy, Pki, free_port

SYNC_WAIT_S = 10
QUIET_S = 1.5  # long enough for a spurious re-sync (the engine answers in milliseconds) to show


@pytest.fixture
def cloud_broker(pki: Pki, short_tmp: Path) -> Iterator[CloudBroker]:
    """conftest's cloud broker, with the $aws topics a shadow service needs."""
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


class Gateway:
    """The test's view of the gateway: a device on the local shadow topics and the relay's link state."""

    def __init__(self, gw: RunningGateway):
        self.running = gw
        self.shadows = ShadowClient(gw.client("operator"))
        self.links: list[dict[str, Any]] = []
        watcher = gw.client("operator")
        watcher.on_message = lambda _c, _u, m: self.links.append(json.loads(m.payload))
        watcher.subscribe(LINK_TOPIC, qos=1)

    def shadow(self, thing: str, name: str | None = None) -> dict[str, Any] | None:
        outcome, answer = self.shadows.request(thing, "get", name=name)
        if outcome == "rejected":
            assert answer["code"] == 404, answer
            return None
        return answer

    def state(self, thing: str, name: str | None = None) -> dict[str, Any] | None:
        answer = self.shadow(thing, name)
        if answer is None:
            return None
        return {s: answer["state"][s] for s in ("desired", "reported") if s in answer["state"]}

    def version(self, thing: str, name: str | None = None) -> int:
        answer = self.shadow(thing, name)
        assert answer is not None
        return int(answer["version"])

    def link_connected(self) -> bool:
        return bool(self.links) and self.links[-1]["connected"]


SHADOWS = """
[[shadows]]
thing = "press-01"
sync = "both"

[[shadows]]
thing = "press-02"
name = "recipe"
sync = "local-to-cloud"

[[shadows]]
thing = "press-03"
sync = "cloud-to-local"

[[shadows]]
thing = "press-04"
sync = "none"
"""


@pytest.fixture
def shadow_gateway(uplink_gateway) -> Iterator[Any]:
    """uplink_gateway that also prints the core's log at teardown (shown on failure)."""
    started: list[RunningGateway] = []

    def factory(gateway_toml: str) -> Gateway:
        gw = uplink_gateway(gateway_toml)
        started.append(gw)
        return Gateway(gw)

    yield factory
    for gw in started:
        log = gw.paths.component_log("core")
        if log.exists():
            print(f"---- {log} (last 40 lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


def gateway_toml(cloud: str) -> str:
    return '[gateway]\nthing_name = "test-gw"\nstatus_interval_s = 0.5\n' + SHADOWS + cloud


def eventually(predicate: Any, what: str) -> None:
    wait_until(predicate, SYNC_WAIT_S, what, interval_s=0.1)


def test_local_changes_go_up_and_cloud_changes_come_down_per_direction(
    shadow_gateway, cloud_broker: CloudBroker, cloud_shadows: CloudShadows
) -> None:
    gw = shadow_gateway(gateway_toml(cloud_broker.toml()))
    eventually(gw.link_connected, "the uplink to announce the cloud link")

    # both: the plant reports, the cloud gets it; the fleet asks, the device gets the delta
    gw.shadows.update("press-01", {"state": {"reported": {"speed": 1}}})
    eventually(lambda: cloud_shadows.state("press-01") == {"reported": {"speed": 1}}, "press-01 reported in the cloud")
    cloud_shadows.fleet_update("press-01", {"desired": {"speed": 3}})
    both = {"desired": {"speed": 3}, "reported": {"speed": 1}}
    eventually(lambda: gw.state("press-01") == both, "press-01 desired on the gateway")
    delta = gw.shadows.messages("$aws/things/press-01/shadow/update/delta", at_least=1)[-1]
    assert delta["state"] == {"speed": 3}, "the device is told what to change, as AWS would tell it"

    # local-to-cloud (a named shadow): up only; the cloud's own edits stay in the cloud
    gw.shadows.update("press-02", {"state": {"reported": {"recipe": "A7"}}}, name="recipe")
    eventually(lambda: cloud_shadows.state("press-02", "recipe") is not None, "press-02/recipe in the cloud")
    assert cloud_shadows.state("press-02", "recipe") == {"reported": {"recipe": "A7"}}
    cloud_shadows.fleet_update("press-02", {"desired": {"recipe": "B1"}}, name="recipe")

    # cloud-to-local: down only; the gateway's own edits stay on the gateway
    cloud_shadows.fleet_update("press-03", {"desired": {"mode": "auto"}})
    eventually(lambda: gw.state("press-03") == {"desired": {"mode": "auto"}}, "press-03 desired on the gateway")
    gw.shadows.update("press-03", {"state": {"reported": {"mode": "auto"}}})

    # none: never leaves the gateway
    gw.shadows.update("press-04", {"state": {"reported": {"x": 1}}})

    time.sleep(QUIET_S)
    assert gw.state("press-02", "recipe") == {"reported": {"recipe": "A7"}}
    assert cloud_shadows.state("press-02", "recipe") == {"desired": {"recipe": "B1"}, "reported": {"recipe": "A7"}}
    assert cloud_shadows.state("press-03") == {"desired": {"mode": "auto"}}
    assert gw.state("press-03") == {"desired": {"mode": "auto"}, "reported": {"mode": "auto"}}
    assert cloud_shadows.state("press-04") is None
    # every change crossed exactly once: one gateway write per local change that had to go up
    assert cloud_shadows.sync_writes == [("press-01", None, 1), ("press-02", "recipe", 1)]
    assert cloud_shadows.shadow("press-01").version == 2  # type: ignore[union-attr]
    assert gw.version("press-01") == 2
    assert gw.version("press-03") == 2


def test_both_sides_changed_during_an_outage_reconcile_by_the_rule_once(
    shadow_gateway, cloud_broker: CloudBroker, cloud_shadows: CloudShadows, link_proxy: LinkProxy
) -> None:
    link_proxy.up()
    gw = shadow_gateway(gateway_toml(cloud_broker.toml(port=link_proxy.port)))
    gw.shadows.update("press-01", {"state": {"desired": {"speed": 1}, "reported": {"speed": 1}}})
    gw.shadows.update("press-02", {"state": {"reported": {"recipe": "A7"}}}, name="recipe")
    cloud_shadows.fleet_update("press-03", {"desired": {"mode": "auto"}})
    start = {"desired": {"speed": 1}, "reported": {"speed": 1}}
    eventually(lambda: cloud_shadows.state("press-01") == start, "press-01 in the cloud")
    eventually(lambda: cloud_shadows.state("press-02", "recipe") is not None, "press-02/recipe in the cloud")
    eventually(lambda: gw.state("press-03") is not None, "press-03 on the gateway")
    assert (cloud_shadows.shadow("press-01").version, gw.version("press-01")) == (1, 1)  # type: ignore[union-attr]

    link_proxy.down()
    eventually(lambda: not gw.link_connected(), "the uplink to announce the outage")
    session_before = gw.links[-1]["session"]
    # the plant reports and switches to manual; the fleet raises the speed and wants auto: `mode`
    # changed on both sides, in both sections
    gw.shadows.update(
        "press-01", {"state": {"reported": {"temp": 70, "mode": "manual"}, "desired": {"mode": "manual"}}}
    )
    gw.shadows.update("press-02", {"state": {"reported": {"recipe": "A8"}}}, name="recipe")
    gw.shadows.update("press-03", {"state": {"reported": {"mode": "auto"}}})
    cloud_shadows.fleet_update("press-01", {"desired": {"speed": 2, "mode": "auto"}, "reported": {"mode": "auto"}})
    cloud_shadows.fleet_update("press-03", {"desired": {"mode": "manual"}})
    time.sleep(0.5)
    assert cloud_shadows.sync_writes == [("press-01", None, 1), ("press-02", "recipe", 1)], "nothing crossed"

    link_proxy.up()
    eventually(gw.link_connected, "the link back")
    assert gw.links[-1]["session"] != session_before, "a new connection is a new session"
    # reported: the plant's `mode` wins; desired: the fleet's `mode` wins; one-sided changes kept
    merged = {"desired": {"speed": 2, "mode": "auto"}, "reported": {"speed": 1, "temp": 70, "mode": "manual"}}
    eventually(lambda: cloud_shadows.state("press-01") == merged, "press-01 reconciled in the cloud")
    eventually(lambda: gw.state("press-01") == merged, "press-01 reconciled on the gateway")
    eventually(lambda: cloud_shadows.state("press-02", "recipe") == {"reported": {"recipe": "A8"}}, "press-02 up after")
    eventually(
        lambda: gw.state("press-03") == {"desired": {"mode": "manual"}, "reported": {"mode": "auto"}},
        "press-03 down after",
    )
    time.sleep(QUIET_S)
    # versions: cloud 1 (first sync) + 1 (fleet) + 1 (the merge); gateway 1 + 1 (outage edit) + 1 (the merge)
    assert cloud_shadows.shadow("press-01").version == 3  # type: ignore[union-attr]
    assert gw.version("press-01") == 3
    assert cloud_shadows.state("press-03") == {"desired": {"mode": "manual"}}, "cloud-to-local never writes up"
    writes = [("press-01", None, 1), ("press-02", "recipe", 1), ("press-01", None, 3), ("press-02", "recipe", 2)]
    assert sorted(cloud_shadows.sync_writes, key=str) == sorted(writes, key=str)

    # a reconnect with nothing new writes nothing anywhere
    link_proxy.down()
    eventually(lambda: not gw.link_connected(), "the second outage")
    link_proxy.up()
    eventually(gw.link_connected, "the link back again")
    time.sleep(QUIET_S)
    assert len(cloud_shadows.sync_writes) == len(writes)
    assert (cloud_shadows.shadow("press-01").version, gw.version("press-01")) == (3, 3)  # type: ignore[union-attr]
    assert gw.version("press-03") == 3


def test_a_sync_that_fails_for_a_passing_reason_is_retried_until_it_lands(
    shadow_gateway, cloud_broker: CloudBroker, cloud_shadows: CloudShadows
) -> None:
    shadows = """
[[shadows]]
thing = "press-01"
sync = "both"

[[shadows]]
thing = "press-02"
name = "recipe"
sync = "local-to-cloud"

[[shadows]]
thing = "press-05"
sync = "both"
"""
    gw = shadow_gateway('[gateway]\nthing_name = "test-gw"\nstatus_interval_s = 0.5\n' + shadows + cloud_broker.toml())
    eventually(gw.link_connected, "the uplink to announce the cloud link")
    eventually(lambda: len(cloud_shadows.requests) >= 3, "the reconciliation on connect")
    core_log = gw.running.paths.component_log("core")
    # no further local change and no reconnect in this test: the retries alone carry changes across

    # throttled (429), then an internal failure (500) [aws-shadow-semantics.md, error codes]
    cloud_shadows.fail_next("press-02", "update", 429, 500, name="recipe")
    # 413: the same request would be refused again, so it is permanent
    cloud_shadows.fail_next("press-05", "update", 413)
    gw.shadows.update("press-02", {"state": {"reported": {"recipe": "A7"}}}, name="recipe")
    gw.shadows.update("press-05", {"state": {"reported": {"big": True}}})
    eventually(
        lambda: cloud_shadows.state("press-02", "recipe") == {"reported": {"recipe": "A7"}},
        "press-02/recipe in the cloud after a 429 and a 500",
    )

    # the cloud applies the update but its answer is lost: the engine's 10 s timeout, then a retry
    cloud_shadows.fail_next("press-01", "update", LOSE_ANSWER)
    gw.shadows.update("press-01", {"state": {"reported": {"speed": 1}}})
    wait_until(
        lambda: "event=shadow-sync-recovered thing=press-01" in core_log.read_text(),
        30,
        "the engine to retry press-01 after its timeout",
        interval_s=0.2,
    )
    time.sleep(QUIET_S)
    assert cloud_shadows.state("press-01") == {"reported": {"speed": 1}}
    # the update whose answer was lost had landed: the retry saw that and wrote nothing twice
    assert [w for w in cloud_shadows.sync_writes if w[0] != "press-05"] == [
        ("press-02", "recipe", 1),
        ("press-01", None, 1),
    ]
    assert cloud_shadows.requests.count(("press-02", "recipe", "update")) == 3

    # the permanent refusal is not retried, and the core says which shadow and why
    assert cloud_shadows.requests.count(("press-05", None, "update")) == 1
    assert cloud_shadows.state("press-05") is None
    log = core_log.read_text()
    refused = [line for line in log.splitlines() if "event=shadow-sync-refused" in line]
    assert len(refused) == 1, refused
    assert "thing=press-05 shadow=classic" in refused[0] and "413" in refused[0]
    assert "event=shadow-sync-retrying thing=press-01 shadow=classic" in log
    assert "event=shadow-sync-retrying thing=press-02 shadow=recipe" in log
