"""The subscription table as the broker enforces it (issue 3, item 4): for a device over TLS, a
function, an adapter, the uplink (`cloud`) and the core (`shadow`), a source may publish only what it
is a source for and a target receives only what it is a target of, with real clients on real mosquitto.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fixtures.gateway import RunningGateway, wait_until
from tests.fixtures.tls_devices import DeviceClient, MqttProbe, enrol, free_port, gateway_on

SHADOW_ACCEPTED = "$aws/things/dev1/shadow/update/accepted"


@dataclass(frozen=True)
class Kind:
    identity: str
    publishes: str  # the topic it is the source of
    receives: frozenset[str]  # everything it may receive of the traffic below
    may_not_publish: tuple[str, ...]  # another source's topic, its own target topic, a stray topic


# One subscription per kind as source, each kind a target once: a ring through all five.
KINDS = {
    "device": Kind("dev1", "wl/dev1/out", frozenset({SHADOW_ACCEPTED}), ("wl/fn1/out", SHADOW_ACCEPTED, "wl/stray")),
    "function": Kind("function.fn1", "wl/fn1/out", frozenset({"wl/dev1/out"}), ("wl/dev1/out", "wl/stray")),
    # an adapter owns its data namespace (line1/#): it reads its own tags and /set commands there
    "adapter": Kind(
        "adapter.line1", "line1/press/temp", frozenset({"wl/fn1/out", "line1/press/temp"}), ("wl/fn1/out", "wl/stray")
    ),
    "cloud": Kind("uplink", "wl/cloud/out", frozenset({"line1/press/temp"}), ("line1/press/temp", "wl/stray")),
    # the shadow service reads every shadow topic, as Greengrass's did
    "shadow": Kind("core", SHADOW_ACCEPTED, frozenset({"wl/cloud/out", SHADOW_ACCEPTED}), ("wl/fn1/out", "wl/stray")),
}


def gateway_toml(tls_port: int) -> str:
    return f"""
[gateway]
thing_name = "wl-gw"
status_interval_s = 0.5

[broker]
tls_port = {tls_port}

[discovery]
enabled = false

[[functions]]
name = "fn1"
code = "functions/fn1"
handler = "main.function_handler"
run_as = "1001:1001"

[[subscriptions]]
source = "device:dev1"
target = "function:fn1"
topic = "wl/dev1/out"

[[subscriptions]]
source = "function:fn1"
target = "adapter:line1"
topic = "wl/fn1/out"

[[subscriptions]]
source = "adapter:line1"
target = "cloud"
topic = "line1/press/temp"

[[subscriptions]]
source = "cloud"
target = "shadow"
topic = "wl/cloud/out"

[[subscriptions]]
source = "shadow"
target = "device:dev1"
topic = "{SHADOW_ACCEPTED}"
"""


ADAPTER = f"""
name = "line1"
protocol = "modbus"

[[devices]]
name = "press"
transport = "tcp"
host = "127.0.0.1"
port = {free_port()}
poll_ms = 1000

[[devices.tags]]
name = "temp"
table = "holding"
address = 0
type = "uint16"
"""
FILES = {"functions/fn1/main.py": "def function_handler(event, context):\n    return None\n"}


@pytest.fixture(scope="module")
def probes() -> Iterator[dict[str, MqttProbe]]:
    """One client per kind, each subscribed to everything it might try to read; then every source
    publishes its own topic once, so each test below only has to look at what arrived where."""
    tls_port = free_port()
    with gateway_on(gateway_toml(tls_port), adapters={"line1": ADAPTER}, files=FILES) as gw:
        found = _connect_all(gw, tls_port)
        try:
            for probe in found.values():
                probe.subscribe("wl/#", "line1/#", "$aws/things/#")
            for kind, probe in found.items():
                assert probe.publish_reason(KINDS[kind].publishes) == "Success", kind
            wait_until(
                lambda: all(KINDS[k].receives <= set(p.topics) for k, p in found.items()), 5, "every permitted message"
            )
            yield found
        finally:
            for probe in found.values():
                probe.close()


def _connect_all(gw: RunningGateway, tls_port: int) -> dict[str, MqttProbe]:
    found: dict[str, MqttProbe] = {}
    files = enrol(gw.paths, "dev1", gw.state_dir.parent / "devices")
    found["device"] = DeviceClient(tls_port, files).connect()
    for kind in ("function", "adapter", "cloud", "shadow"):
        identity = KINDS[kind].identity
        found[kind] = MqttProbe(gw.client(identity, client_id=f"probe-{identity}"))
    return found


@pytest.mark.parametrize("kind", list(KINDS))
def test_target_receives_only_what_it_is_a_target_of(probes: dict[str, MqttProbe], kind: str) -> None:
    time.sleep(0.2)  # anything the ACL let through wrongly would have arrived by now
    assert set(probes[kind].topics) == set(KINDS[kind].receives)


@pytest.mark.parametrize("kind", list(KINDS))
def test_source_may_publish_only_what_it_is_a_source_for(probes: dict[str, MqttProbe], kind: str) -> None:
    probe = probes[kind]
    assert probe.publish_reason(KINDS[kind].publishes) == "Success"
    for topic in KINDS[kind].may_not_publish:
        assert probe.publish_reason(topic) == "Not authorized", topic


def test_refused_publications_reach_nobody(probes: dict[str, MqttProbe]) -> None:
    seen_before = {kind: list(p.topics) for kind, p in probes.items()}
    for kind, probe in probes.items():
        assert probe.publish_reason("wl/stray") == "Not authorized", kind
    time.sleep(0.3)
    for kind, probe in probes.items():
        assert "wl/stray" not in probe.topics[len(seen_before[kind]) :], kind
