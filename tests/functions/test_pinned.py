"""The long-lived function runner on a real gateway (issue 4 items 3 and 5): a module whose init loops
forever (the seminar's periodic-task pattern) still has its handler answer; a module without a handler
is a healthy long-lived function that refuses the messages routed to it; a handler call past the
function's timeout is answered for, counted, and the function restarted by supervisord; a queue_size
the runner's memory could not hold is capped, and says so.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from functions.pinned import MAX_QUEUED
from tests.fixtures.gateway import RunningGateway, functions_gateway, wait_until
from tests.functions.test_runtime import function_status, invoke

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

TICKER = """
import os, time
from functions import sdk

calls = []

def function_handler(event, context):
    calls.append(event)
    return {"ticks": ticks, "calls": len(calls), "pid": os.getpid()}

ticks = 0
while True:  # the periodic task: this module never finishes importing
    ticks += 1
    sdk.publish("ticks/ticker", {"tick": ticks}, qos=1)
    time.sleep(0.1)
"""

HEADLESS = """
from functions import sdk

sdk.publish("ticks/headless", {"hello": "once"}, qos=1)
"""

GATEWAY = """
[gateway]
thing_name = "pinned-test"
status_interval_s = 0.5

[[functions]]
name = "ticker"
code = "functions/ticker"
handler = "ticker.function_handler"
lifecycle = "long-lived"
run_as = "1021:1021"

[[functions]]
name = "headless"
code = "functions/headless"
handler = "headless.function_handler"
lifecycle = "long-lived"
run_as = "1022:1022"

[[functions]]
name = "sleeper"
code = "functions/sleeper"
handler = "sleeper.function_handler"
lifecycle = "long-lived"
run_as = "1023:1023"
timeout_s = 1
queue_size = 1000000

[[subscriptions]]
source = "function:ticker"
target = "device:tester"
topic = "ticks/ticker"

[[subscriptions]]
source = "function:headless"
target = "device:tester"
topic = "ticks/headless"

[[subscriptions]]
source = "device:tester"
target = "function:ticker"
topic = "ticker/in"
"""

SLEEPER = """
import os, time

def function_handler(event, context):
    time.sleep(event.get("s", 0))
    return {"pid": os.getpid(), "slept": event.get("s", 0)}
"""

CODE = {"ticker": TICKER, "headless": HEADLESS, "sleeper": SLEEPER}


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with functions_gateway(
        "mgpin", GATEWAY, CODE, expect=("broker", "core", "fn-ticker", "fn-headless", "fn-sleeper")
    ) as running:
        yield running


class Ticks:
    """The operator's view of what the long-lived functions publish."""

    def __init__(self, gw: RunningGateway):
        self.seen: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        client = gw.client("operator")
        subscribed = threading.Event()
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._add
        client.subscribe("ticks/#", qos=1)
        assert subscribed.wait(5)

    def _add(self, _c: object, _u: object, message) -> None:
        with self.lock:
            self.seen.setdefault(message.topic, []).append(json.loads(message.payload))

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.seen.get(topic, []))


def test_module_that_loops_forever_still_has_its_handler_answer(gw: RunningGateway) -> None:
    ticks = Ticks(gw)
    wait_until(lambda: ticks.count("ticks/ticker") >= 3, 10, "the module's periodic publishes")
    first = invoke(gw, "ticker", {"ask": 1})
    assert first["function_error"] is None, first
    assert first["result"]["ticks"] > 0 and first["result"]["calls"] == 1
    # a message routed by the subscription table reaches the same handler, in order
    publisher = gw.client("operator")
    publisher.publish("ticker/in", json.dumps({"ask": 2}), qos=1).wait_for_publish(5)
    second = invoke(gw, "ticker", {"ask": 3})
    assert second["result"]["calls"] == 3 and second["result"]["pid"] == first["result"]["pid"]
    assert second["result"]["ticks"] >= first["result"]["ticks"]
    # the init loop keeps running beside the handler
    before = ticks.count("ticks/ticker")
    wait_until(lambda: ticks.count("ticks/ticker") > before + 2, 10, "more periodic publishes")
    status = function_status(gw, "ticker")
    assert (status["function_state"], status["init"], status["handler"]) == ("ready", "running", True), status
    assert status["problems"] == [] and status["invocations"] == 3


def test_module_without_a_handler_is_healthy_and_refuses_messages(gw: RunningGateway) -> None:
    wait_until(lambda: function_status(gw, "headless").get("init") == "done", 10, "the headless init")
    status = function_status(gw, "headless")
    assert (status["function_state"], status["handler"], status["problems"]) == ("running", False, []), status
    answer = invoke(gw, "headless", {"x": 1})
    assert answer["function_error"] == "Unhandled" and "has no handler" in answer["error"], answer
    wait_until(lambda: function_status(gw, "headless")["rejected"] == 1, 5, "the refusal counted")
    assert gw.status()["processes"]["fn-headless"]["state"] == "RUNNING"


def test_handler_past_its_timeout_is_answered_counted_and_the_function_restarted(gw: RunningGateway) -> None:
    quick = invoke(gw, "sleeper", {"s": 0})
    assert quick["function_error"] is None, quick
    old_pid = quick["result"]["pid"]
    # as an on-demand timeout: the caller is told at once rather than after the handler's 30 s
    hung = invoke(gw, "sleeper", {"s": 30}, timeout_s=10)
    assert hung == {"result": None, "function_error": "Unhandled", "error": "Task timed out after 1 seconds"}

    def restarted() -> bool:
        process = gw.status()["processes"]["fn-sleeper"]
        beat = gw.status()["components"].get("fn-sleeper", {})
        return process["state"] == "RUNNING" and process["pid"] != old_pid and beat.get("pid") == process["pid"]

    wait_until(restarted, 20, "supervisord to restart fn-sleeper", interval_s=0.2)
    after = invoke(gw, "sleeper", {"s": 0})
    assert after["function_error"] is None and after["result"]["pid"] != old_pid, after
    # the timed-out message was acknowledged, not delivered again to time out once more
    time.sleep(2)
    status = function_status(gw, "sleeper")
    assert status["timeouts"] == 1 and status["function_state"] == "ready", status
    assert gw.status()["processes"]["fn-sleeper"]["pid"] == after["result"]["pid"]
    log = gw.paths.function_log("sleeper").read_text()
    assert "event=timeout" in log and "timeout_s=1" in log


def test_a_queue_larger_than_the_runner_can_hold_is_capped_and_logged(gw: RunningGateway) -> None:
    # mosquitto 2.0.11 sends past the runner's Receive Maximum, so the runner's queue is the bound: a
    # million queued messages (about 7 KB each) would take the function past its memory limit
    wait_until(lambda: "queue_size" in function_status(gw, "sleeper"), 10, "the sleeper's status")
    assert function_status(gw, "sleeper")["queue_size"] == MAX_QUEUED == 4096
    log = gw.paths.function_log("sleeper").read_text()
    assert "event=queue-size-capped queue_size=1000000 effective=4096" in log
