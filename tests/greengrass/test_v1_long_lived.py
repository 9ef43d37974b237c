"""Long-lived Greengrass v1 functions on a real gateway, through the ways their single worker goes away:
killed while it long-polls for work (the next message must reach its replacement), redeployed with new
code (its publishes, under the new version's MY_FUNCTION_ARN, must still go through), a module whose
import fails (callers hear why at once instead of timing out one by one), and a module whose import never
returns (the periodic-task pattern: a healthy worker that publishes forever and takes no messages).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.fixtures.gateway import RunningGateway, free_port, start_gateway, wait_until
from tests.functions.test_runtime import function_status, invoke

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

TICKER = """
import json, os, threading, time
import greengrasssdk

VERSION = {version}
client = greengrasssdk.client("iot-data")

def tick_forever():
    while True:
        try:
            client.publish(topic="gg/tick", payload=json.dumps(
                {{"pid": os.getpid(), "version": VERSION, "arn": os.environ["MY_FUNCTION_ARN"]}}))
        except Exception as exc:
            print("publish failed:", exc, flush=True)
        time.sleep(0.2)

threading.Thread(target=tick_forever, daemon=True).start()

def function_handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {{"pid": os.getpid(), "version": VERSION, "event": event}}
"""

# longer than supervisord's startsecs, so it is restarted at once each time, and shorter than the timeout
SLOW_BROKEN = """
import time
time.sleep(1.2)
raise RuntimeError("the line's PLC is not configured")

def function_handler(event, context):
    return event
"""

# the loop at module level, as many v1 samples have it: the import never returns (contract section 4.2)
LOOPER = """
import json, os, time
import greengrasssdk

VERSION = {version}
client = greengrasssdk.client("iot-data")

def function_handler(event, context):
    return {{"handled": event}}

n = 0
while True:
    n += 1
    client.publish(topic="gg/loop", payload=json.dumps(
        {{"n": n, "pid": os.getpid(), "version": VERSION, "arn": os.environ["MY_FUNCTION_ARN"]}}))
    time.sleep(0.2)
"""

BROKEN = """
import no_such_module_for_millgate_tests

def function_handler(event, context):
    return event
"""


def _gateway_toml(port: int) -> str:
    functions = "".join(
        f"""
[[functions]]
name = "{name}"
code = "functions/{name}"
handler = "{name}.function_handler"
lifecycle = "long-lived"
runtime = "greengrass-v1"
run_as = "{uid}:{uid}"
timeout_s = 2
daemon_port = {port}
"""
        for name, uid in (("Ticker", 1041), ("Poller", 1042), ("Broken", 1043), ("Looper", 1044), ("SlowBroken", 1045))
    )
    return f"""
[gateway]
thing_name = "gg-long-lived"
status_interval_s = 0.5
{functions}
[[subscriptions]]
source = "function:Ticker"
target = "device:tester"
topic = "gg/tick"

[[subscriptions]]
source = "function:Looper"
target = "device:tester"
topic = "gg/loop"

[[subscriptions]]
source = "device:tester"
target = "function:Looper"
topic = "gg/loop/in"
"""


@pytest.fixture(scope="module")
def gw(greengrasssdk_dir: Path) -> Iterator[RunningGateway]:
    base = Path("/tmp") / f"mgggll{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    config = base / "etc"
    for name, source in (
        ("Ticker", TICKER.format(version=1)),
        ("Poller", TICKER.format(version=1)),
        ("Broken", BROKEN),
        ("Looper", LOOPER.format(version=1)),
        ("SlowBroken", SLOW_BROKEN),
    ):
        code = config / "functions" / name
        shutil.copytree(greengrasssdk_dir / "greengrasssdk", code / "greengrasssdk")
        (code / f"{name}.py").write_text(source)
    port = free_port()
    (config / "gateway.toml").write_text(_gateway_toml(port))
    running = start_gateway(config, base / "s", expect=("broker", "core", "fn-Ticker", "fn-Poller", "fn-Looper"))
    running.daemon_port = port  # type: ignore[attr-defined]
    yield running
    running.stop()
    running.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)


class Ticks:
    """The operator's view of a topic (gg/tick by default): every message's document, in arrival order."""

    def __init__(self, gw: RunningGateway, topic: str = "gg/tick"):
        self.seen: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.client = gw.client("operator")
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._add
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5)

    def _add(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self.changed:
            self.seen.append(json.loads(message.payload))
            self.changed.notify_all()

    def wait_for(self, match: Any, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                found = [tick for tick in self.seen if match(tick)]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                assert left > 0, f"no matching tick; the last ones: {self.seen[-3:]}"
                self.changed.wait(left)


def _workers(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    """The v1 health API's workers, by function name."""
    url = f"http://127.0.0.1:{gw.daemon_port}/2016-11-01/health/workers"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=5) as response:
        return {w["FuncArn"].split(":")[6]: w for w in json.loads(response.read())}


def _polling_pid(gw: RunningGateway, function: str) -> int:
    """The pid of the function's worker once it waits for work."""
    found: list[int] = []

    def polling() -> bool:
        worker = _workers(gw).get(function, {})
        if worker.get("WorkerState") == "Waiting" and worker.get("ProcessId"):
            found.append(worker["ProcessId"])
            return True
        return False

    wait_until(polling, 30, f"{function}'s worker to poll for work", interval_s=0.2)
    return found[-1]


def test_worker_killed_while_it_polls_hands_the_next_message_to_its_replacement(gw: RunningGateway) -> None:
    killed = _polling_pid(gw, "Poller")
    assert invoke(gw, "Poller", {"n": 0})["result"]["pid"] == killed
    time.sleep(0.5)  # back in its long poll
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: _polling_pid(gw, "Poller") != killed, 30, "supervisord to start a new worker")
    replacement = _polling_pid(gw, "Poller")
    answer = invoke(gw, "Poller", {"n": 1})
    assert answer["function_error"] is None, answer
    assert answer["result"] == {"pid": replacement, "version": 1, "event": {"n": 1}}


def test_redeployed_code_publishes_under_its_new_version_and_answers_within_the_new_timeout(
    gw: RunningGateway,
) -> None:
    ticks = Ticks(gw)
    first = ticks.wait_for(lambda t: t["version"] == 1, 15)
    core = gw.status()["processes"]["core"]["pid"]
    (gw.config_dir / "functions" / "Ticker" / "Ticker.py").write_text(TICKER.format(version=2))
    toml = gw.config_dir / "gateway.toml"
    before, ticker = toml.read_text().split('name = "Ticker"\n', 1)
    toml.write_text(before + 'name = "Ticker"\n' + ticker.replace("timeout_s = 2\n", "timeout_s = 5\n", 1))
    result = gw.cli("deploy", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restarted: fn-Ticker" in result.stdout and "core" not in result.stdout, result.stdout
    assert gw.status()["processes"]["core"]["pid"] == core  # the core kept running
    second = ticks.wait_for(lambda t: t["version"] == 2, 15)
    assert second["arn"] != first["arn"]  # MY_FUNCTION_ARN is qualified with the new code version
    assert second["pid"] != first["pid"]
    assert _workers(gw)["Ticker"]["FuncArn"] == second["arn"]  # the core serves the new version's ARN
    answer = invoke(gw, "Ticker", {"sleep": 3})  # past the old timeout of 2 s, within the new one
    assert answer["function_error"] is None, answer
    assert answer["result"]["version"] == 2


def test_import_failure_is_answered_at_once_with_its_reason(gw: RunningGateway) -> None:
    wait_until(
        lambda: _workers(gw).get("Broken", {}).get("WorkerState") == "FailedInitialization",
        30,
        "the import failure reported",
        interval_s=0.2,
    )
    for n in range(3):
        started = time.monotonic()
        answer = invoke(gw, "Broken", {"n": n})
        assert time.monotonic() - started < 1.5, "answered only after the function's timeout"
        assert answer["function_error"] == "Unhandled", answer
        assert "function cannot run" in answer["error"]
        assert "No module named 'no_such_module_for_millgate_tests'" in answer["error"]


def test_import_failing_while_a_message_waits_for_it_answers_that_message_at_once(gw: RunningGateway) -> None:
    def importing() -> bool:
        worker = _workers(gw).get("SlowBroken", {})
        return worker.get("WorkerState") == "Starting" and bool(worker.get("ProcessId"))

    wait_until(importing, 30, "SlowBroken's worker importing its module")
    started = time.monotonic()
    answer = invoke(gw, "SlowBroken", {"n": 1})
    assert time.monotonic() - started < 1.8, "answered only at the function's timeout"
    assert answer["function_error"] == "Unhandled", answer
    assert "function cannot run: the handler could not load" in answer["error"]
    assert "the line's PLC is not configured" in answer["error"]


def test_module_that_loops_forever_at_import_runs_healthy_and_publishes_and_its_messages_time_out_alone(
    gw: RunningGateway,
) -> None:
    loops = Ticks(gw, "gg/loop")
    first = loops.wait_for(lambda t: t["version"] == 1, 15)
    pid = gw.status()["processes"]["fn-Looper"]["pid"]
    assert first["pid"] == pid  # the runtime is the process supervisord started (exec'd in place)
    # its worker is known by its pid while the import runs: the core's heartbeat for fn-Looper says so
    wait_until(lambda: function_status(gw, "Looper").get("pid") == pid, 10, "fn-Looper's heartbeat with its pid")
    status = function_status(gw, "Looper")
    assert (status["function_state"], status["problems"]) == ("ready", [])
    worker = _workers(gw)["Looper"]
    assert (worker["ProcessId"], worker["WorkerState"]) == (pid, "Starting")

    # v1 gave a worker work only once its module had loaded: a message waits, times out, and the worker
    # (whose import is not subject to the timeout) keeps running its loop
    started = time.monotonic()
    answer = invoke(gw, "Looper", {"n": 1})
    assert (answer["function_error"], answer["error"]) == ("Unhandled", "Task timed out after 2.00 seconds")
    assert time.monotonic() - started >= 1.9
    loops.client.publish("gg/loop/in", b'{"routed": true}', qos=1).wait_for_publish(5)
    time.sleep(2.5)  # past the routed message's timeout
    latest = loops.wait_for(lambda t: t["n"] > first["n"] + 20, 15)
    assert latest["pid"] == pid
    assert gw.status()["processes"]["fn-Looper"]["pid"] == pid
    core_log = gw.paths.component_log("core").read_text()
    assert "event=restarted program=fn-Looper" not in core_log
    assert f"function=Looper event=message-not-taken pid={pid}" in core_log

    # a deployment waits for the new worker's heartbeat from its pid: an import that never returns is healthy
    (gw.config_dir / "functions" / "Looper" / "Looper.py").write_text(LOOPER.format(version=2))
    result = gw.cli("deploy", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restarted: fn-Looper" in result.stdout, result.stdout
    second = loops.wait_for(lambda t: t["version"] == 2, 15)
    assert second["pid"] == gw.status()["processes"]["fn-Looper"]["pid"] != pid
    assert second["arn"] != first["arn"]
    assert loops.wait_for(lambda t: t["version"] == 2 and t["n"] >= second["n"] + 5, 15)["pid"] == second["pid"]
