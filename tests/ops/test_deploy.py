"""`millgate deploy` against a real gateway: only the changed process restarts (an on-demand function
alone is reconfigured inside the running core), routes through the others lose nothing meanwhile, a
deployment that does not come up healthy rolls back by itself.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.fixtures.gateway import RunningGateway, start_gateway, wait_until
from tests.functions.test_runtime import invoke

GATEWAY = """
[gateway]
thing_name = "deploy-gw"
status_interval_s = 0.5

[deployment]
health_timeout_s = 15
settle_s = 1.5

[[functions]]
name = "relay"
code = "functions/relay"
handler = "main.function_handler"
lifecycle = "long-lived"
run_as = "1001:1001"
queue_size = 100000

[[functions]]
name = "other"
code = "functions/other"
handler = "main.function_handler"
lifecycle = "long-lived"
run_as = "1002:1002"

[[functions]]
name = "ondemand"
code = "functions/ondemand"
handler = "main.function_handler"
run_as = "1003:1003"

[[subscriptions]]
source = "device:feeder"
target = "function:relay"
topic = "in/#"

[[subscriptions]]
source = "function:relay"
target = "device:observer"
topic = "out/#"
"""
RELAY = """
from functions import sdk

def function_handler(event, context):
    sdk.publish("out/relay", event, qos=1)
"""
OTHER = "VERSION = {version}\n\ndef function_handler(event, context):\n    return VERSION\n"
BROKEN = "raise ImportError('this deployment is broken on purpose')\n"
FILES = {
    "functions/relay/main.py": RELAY,
    "functions/other/main.py": OTHER.format(version=1),
    "functions/ondemand/main.py": OTHER.format(version=1),
}
PROGRAMS = ("broker", "core", "fn-relay", "fn-other")


def _pids(gw: RunningGateway) -> dict[str, int]:
    return {name: p["pid"] for name, p in gw.status()["processes"].items()}


def _ready(gw: RunningGateway, component: str) -> bool:
    beat = gw.status()["components"].get(component, {})
    return beat.get("function_state") == "ready"


class Stream:
    """Publishes in/<n> as the operator at a steady rate and counts what the relay sends back."""

    def __init__(self, gw: RunningGateway):
        self.received: set[int] = set()
        self.pids: set[int | None] = set()  # the workers that answered, when the function says
        self.sent = 0
        self.stop = threading.Event()
        self.subscriber = gw.client("operator")
        self.subscriber.on_message = self._on_message
        done = threading.Event()
        self.subscriber.on_subscribe = lambda *_: done.set()
        self.subscriber.subscribe([("out/#", SubscribeOptions(qos=1))])
        assert done.wait(5)
        self.publisher = gw.client("operator")
        self.thread = threading.Thread(target=self._publish, daemon=True)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        document = json.loads(message.payload)
        self.received.add(document["seq"])
        self.pids.add(document.get("pid"))

    def _publish(self) -> None:
        while not self.stop.is_set():
            info = self.publisher.publish("in/line1", json.dumps({"seq": self.sent}), qos=1)
            info.wait_for_publish(5)
            self.sent += 1
            time.sleep(0.005)

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _start(gateway_factory) -> RunningGateway:
    gw = gateway_factory(GATEWAY, files=FILES, expect=PROGRAMS)
    wait_until(lambda: _ready(gw, "fn-relay") and _ready(gw, "fn-other"), 15, "both pinned functions ready")
    return gw


def test_deploy_restarts_only_the_changed_function_and_loses_nothing_on_other_routes(gateway_factory) -> None:
    gw = _start(gateway_factory)
    before = _pids(gw)
    (gw.config_dir / "functions/other/main.py").write_text(OTHER.format(version=2))
    with Stream(gw) as stream:
        time.sleep(0.5)
        result = gw.cli("deploy", timeout=60)
        time.sleep(0.5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    assert "restarted: fn-other" in result.stdout, result.stdout
    after = _pids(gw)
    assert after["fn-other"] != before["fn-other"]
    assert {n: p for n, p in after.items() if n != "fn-other"} == {n: p for n, p in before.items() if n != "fn-other"}
    wait_until(lambda: len(stream.received) >= stream.sent, 10, "every relayed message")
    assert stream.sent > 100
    assert stream.received == set(range(stream.sent))

    history = json.loads(gw.cli("deploy", "--history", "--json").stdout)
    assert [(e["by"], e["result"]) for e in history] == [("run", "running"), ("deploy", "succeeded")]
    assert history[-1]["changes"]["restarted"] == ["fn-other"]
    assert "fn-other" in gw.cli("deploy", "--history").stdout


def test_invalid_config_is_refused_and_a_function_failing_to_import_rolls_back(gateway_factory) -> None:
    gw = _start(gateway_factory)
    before = _pids(gw)
    good = (gw.config_dir / "gateway.toml").read_text()
    (gw.config_dir / "gateway.toml").write_text(good.replace('run_as = "1002:1002"', 'run_as = "0:0"'))
    refused = gw.cli("deploy", timeout=60)
    assert refused.returncode == 2
    assert "functions[1].run_as" in refused.stderr and "refused" in refused.stderr
    assert _pids(gw) == before
    (gw.config_dir / "gateway.toml").write_text(good)

    (gw.config_dir / "functions/other/main.py").write_text(BROKEN)
    result = gw.cli("deploy", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled-back" in result.stderr and "fn-other" in result.stderr, result.stderr
    assert "rolled back to deployment 1" in result.stderr
    wait_until(lambda: _ready(gw, "fn-other"), 10, "the previous fn-other running again")
    after = _pids(gw)
    assert {n: p for n, p in after.items() if n != "fn-other"} == {n: p for n, p in before.items() if n != "fn-other"}
    assert (gw.state_dir / "deployments/current").readlink() == Path("1")
    assert "VERSION = 1" in (gw.state_dir / "deployments/current/config/functions/other/main.py").read_text()
    history = json.loads(gw.cli("deploy", "--history", "--json").stdout)
    assert [e["result"] for e in history] == ["running", "refused", "rolled-back"]

    # a restart of the gateway keeps running the rolled-back-to config, not the broken source again
    gw.stop()
    again = start_gateway(gw.config_dir, gw.state_dir, expect=PROGRAMS)
    try:
        wait_until(lambda: _ready(again, "fn-other"), 15, "fn-other ready after the restart")
    finally:
        again.stop()
        again.kill_leftovers()


ON_DEMAND_GATEWAY = """
[gateway]
thing_name = "deploy-od"
status_interval_s = 0.5

[deployment]
health_timeout_s = 15
settle_s = 1.5

[[functions]]
name = "steady"
code = "functions/steady"
handler = "main.function_handler"
run_as = "1001:1001"
queue_size = 100000
idle_s = 600

[[functions]]
name = "anomaly"
code = "functions/anomaly"
handler = "main.function_handler"
run_as = "1002:1002"
idle_s = 600

[[subscriptions]]
source = "device:feeder"
target = "function:steady"
topic = "in/#"

[[subscriptions]]
source = "function:steady"
target = "device:observer"
topic = "out/#"
"""
STEADY = """
import os

from functions import sdk

def function_handler(event, context):
    sdk.publish("out/steady", {"seq": event["seq"], "pid": os.getpid()}, qos=1)
"""
ANOMALY = """
import time

VERSION = {version}

def function_handler(event, context):
    time.sleep(event.get("sleep", 0))
    return VERSION
"""
ON_DEMAND_FILES = {
    "functions/steady/main.py": STEADY,
    "functions/anomaly/main.py": ANOMALY.format(version=1),
}


def _start_on_demand(gateway_factory) -> RunningGateway:
    gw = gateway_factory(ON_DEMAND_GATEWAY, files=ON_DEMAND_FILES, expect=("broker", "core"))
    wait_until(lambda: _ready(gw, "fn-steady") and _ready(gw, "fn-anomaly"), 15, "both on-demand functions ready")
    assert invoke(gw, "anomaly", {})["result"] == 1
    return gw


def test_deploy_reconfigures_one_on_demand_function_inside_the_running_core(gateway_factory) -> None:
    gw = _start_on_demand(gateway_factory)
    before = _pids(gw)
    toml = gw.config_dir / "gateway.toml"
    # the function's code and its own [[functions]] entry change; nothing else does
    (gw.config_dir / "functions/anomaly/main.py").write_text(ANOMALY.format(version=2))
    toml.write_text(toml.read_text().replace('run_as = "1002:1002"\n', 'run_as = "1002:1002"\ntimeout_s = 5\n'))
    in_flight: list[dict] = []
    slow = threading.Thread(target=lambda: in_flight.append(invoke(gw, "anomaly", {"sleep": 2})), daemon=True)
    with Stream(gw) as stream:
        wait_until(lambda: len(stream.received) > 20, 15, "the steady function's warm worker answering")
        warm = stream.pids.copy()
        slow.start()
        wait_until(lambda: gw.status()["components"]["fn-anomaly"].get("busy") == 1, 10, "anomaly busy")
        result = gw.cli("deploy", timeout=60)
        time.sleep(0.5)
    slow.join(15)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reconfigured in core: anomaly" in result.stdout, result.stdout
    assert "restarted" not in result.stdout, result.stdout
    assert _pids(gw) == before  # the core and every other process kept running
    wait_until(lambda: len(stream.received) >= stream.sent, 10, "every message to the steady function answered")
    assert stream.sent > 100
    assert stream.received == set(range(stream.sent))
    assert len(warm) == 1 and stream.pids == warm  # steady's warm worker was never replaced
    # the old version's worker finished the message it held; the new version answers from now on
    assert [(a["function_error"], a["result"]) for a in in_flight] == [(None, 1)], in_flight
    answer = invoke(gw, "anomaly", {})
    assert answer["function_error"] is None and answer["result"] == 2, answer

    history = json.loads(gw.cli("deploy", "--history", "--json").stdout)
    assert history[-1]["result"] == "succeeded"
    assert history[-1]["changes"]["reconfigured"] == ["anomaly"]
    assert history[-1]["changes"]["restarted"] == []


def test_deploy_still_restarts_the_core_when_its_own_settings_change(gateway_factory) -> None:
    gw = _start_on_demand(gateway_factory)
    before = _pids(gw)
    toml = gw.config_dir / "gateway.toml"
    toml.write_text(toml.read_text().replace("settle_s = 1.5", "settle_s = 1.0"))  # [deployment]: the core's
    result = gw.cli("deploy", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restarted: core" in result.stdout and "reconfigured" not in result.stdout, result.stdout
    after = _pids(gw)
    assert after["core"] != before["core"]
    assert {n: p for n, p in after.items() if n != "core"} == {n: p for n, p in before.items() if n != "core"}
    assert invoke(gw, "anomaly", {})["result"] == 1
