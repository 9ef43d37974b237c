"""The function runtime end to end: a real gateway (supervisord, mosquitto, the core's dispatcher), real
worker processes under their configured uids, messages routed by the subscription table, direct
invocations answered the Greengrass v1 way (result, or FunctionError 'Handled'/'Unhandled').
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.fixtures.gateway import RunningGateway, start_gateway, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

PROBE = """
import grp, os, time
from functions import sdk

hog = []

def function_handler(event, context):
    if isinstance(event, bytes):
        return {"type": "bytes", "length": len(event), "subject": context.client_context.custom["subject"]}
    action = event.get("action")
    if action == "whoami":
        return {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "pid": os.getpid(),
                "subject": context.client_context.custom["subject"], "env": os.environ.get("PLANT")}
    if action == "write":
        with open(event["path"], "a") as f:
            f.write("x")
        return "written"
    if action == "read":
        with open(event["path"], "rb") as f:
            return len(f.read())
    if action == "raise":
        raise ValueError("the probe was asked to fail")
    if action == "sleep":
        time.sleep(event["s"])
        return "slept"
    if action == "alloc":
        hog.append(bytearray(event["mb"] * 1024 * 1024))
        return "allocated"
    if action == "publish":
        sdk.publish("results/probe", {"from": "probe", "pid": os.getpid()}, qos=1)
        return "published"
    if action == "invoke":
        return sdk.invoke("pool", {"ask": "pid"})
    return {"echo": event}
"""

POOL = """
import os, time
def function_handler(event, context):
    time.sleep(event.get("s", 0))
    return {"pid": os.getpid()}
"""

ORDER = """
from functions import sdk
state = {"last": -1, "count": 0, "violations": 0}

def function_handler(event, context):
    seq = event["seq"]
    if seq < 0:
        sdk.publish("results/order", state, qos=1)
        return
    if seq != state["last"] + 1:
        state["violations"] += 1
    state["last"] = seq
    state["count"] += 1
"""

GATEWAY = """
[gateway]
thing_name = "fn-test"
status_interval_s = 0.5

[[resources]]
name = "rw-volume"
kind = "volume"
path = "{rw}"

[[resources]]
name = "ro-volume"
kind = "volume"
path = "{ro}"

[[resources]]
name = "null"
kind = "device"
path = "/dev/null"
group_owner = true

[[resources]]
name = "missing"
kind = "device"
path = "/dev/millgate-test-missing"

[[functions]]
name = "probe"
code = "functions/probe"
handler = "probe.function_handler"
run_as = "1001:1001"
timeout_s = 2
memory_mb = 64
max_concurrency = 1
environment = {{ PLANT = "a" }}
resources = [{{ name = "rw-volume", access = "rw" }}, {{ name = "ro-volume", access = "ro" }},
             {{ name = "null", access = "rw" }}]

[[functions]]
name = "pool"
code = "functions/pool"
handler = "pool.function_handler"
run_as = "1002:1002"
max_concurrency = 4
idle_s = 2

[[functions]]
name = "tiny"
code = "functions/pool"
handler = "pool.function_handler"
run_as = "1002:1002"
max_concurrency = 1
queue_size = 2

[[functions]]
name = "broken"
code = "functions/pool"
handler = "pool.function_handler"
run_as = "1004:1004"
resources = [{{ name = "missing" }}]

[[functions]]
name = "order"
code = "functions/order"
handler = "order.function_handler"
lifecycle = "long-lived"
run_as = "1003:1003"
queue_size = 20000

[[subscriptions]]
source = "device:tester"
target = "function:probe"
topic = "probe/in/#"

[[subscriptions]]
source = "device:tester"
target = "function:tiny"
topic = "tiny/in"

[[subscriptions]]
source = "device:tester"
target = "function:order"
topic = "order/in"

[[subscriptions]]
source = "function:probe"
target = "function:pool"
topic = "results/probe"

[[subscriptions]]
source = "function:order"
target = "function:pool"
topic = "results/order"
"""


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    base = Path("/tmp") / f"mgfn{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    rw, ro = base / "rw", base / "ro"
    for volume in (rw, ro):
        volume.mkdir(mode=0o755)
    (ro / "data.txt").write_text("read me")
    os.chmod(ro / "data.txt", 0o666)  # world-writable: the ro grant must still refuse writes
    config = base / "etc"
    for name, code in (("probe", PROBE), ("pool", POOL), ("order", ORDER)):
        (config / "functions" / name).mkdir(parents=True)
        (config / "functions" / name / f"{name}.py").write_text(code)
    (config / "gateway.toml").write_text(GATEWAY.format(rw=rw, ro=ro))
    running = start_gateway(config, base / "s", expect=("broker", "core", "fn-order"))
    running.volumes = (rw, ro)  # type: ignore[attr-defined]
    yield running
    running.stop()
    running.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)


def invoke(gw: RunningGateway, function: str, payload: object, timeout_s: float = 15) -> dict:
    """Invoke a function directly as an SDK caller would, and return the reply document."""
    client = gw.client("operator")
    reply_topic = f"millgate/fn/tester/reply/{uuid.uuid4().hex}"
    arrived = threading.Event()
    answer: list[dict] = []

    def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
        answer.append(json.loads(message.payload))
        arrived.set()

    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(reply_topic, qos=1)
    assert subscribed.wait(5)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = reply_topic
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    client.publish(f"millgate/fn/{function}/invoke", body, qos=1, properties=properties)
    assert arrived.wait(timeout_s), f"no reply from {function}"
    client.disconnect()
    client.loop_stop()
    gw.clients.remove(client)
    return answer[0]


def function_status(gw: RunningGateway, function: str) -> dict:
    return gw.status()["components"][f"fn-{function}"]


def test_worker_runs_as_configured_uid_gid_with_resource_groups_and_environment(gw: RunningGateway) -> None:
    reply = invoke(gw, "probe", {"action": "whoami"})
    assert reply["function_error"] is None, reply
    me = reply["result"]
    assert (me["uid"], me["gid"]) == (1001, 1001)
    assert me["groups"] == sorted({Path("/dev/null").stat().st_gid})  # group_owner of its device only
    assert me["env"] == "a"
    assert me["subject"] == "millgate/fn/probe/invoke"


def test_warm_worker_is_reused_between_messages(gw: RunningGateway) -> None:
    first = invoke(gw, "probe", {"action": "whoami"})["result"]["pid"]
    second = invoke(gw, "probe", {"action": "whoami"})["result"]["pid"]
    assert first == second


def test_rw_volume_and_device_are_writable_ro_volume_is_not(gw: RunningGateway) -> None:
    rw, ro = gw.volumes  # type: ignore[attr-defined]
    assert invoke(gw, "probe", {"action": "write", "path": str(rw / "out.txt")})["result"] == "written"
    assert invoke(gw, "probe", {"action": "write", "path": "/dev/null"})["result"] == "written"
    assert invoke(gw, "probe", {"action": "read", "path": str(ro / "data.txt")})["result"] == 7
    refused = invoke(gw, "probe", {"action": "write", "path": str(ro / "data.txt")})
    assert refused["function_error"] == "Handled"
    assert "PermissionError" in refused["error"]


def test_worker_cannot_read_gateway_secrets(gw: RunningGateway) -> None:
    for secret in (
        gw.paths.credentials_dir / "core.json",
        gw.paths.credentials_dir / "operator.json",
        gw.paths.credentials_dir / "function.pool.json",
        gw.paths.ca_key,  # the group CA's private key
    ):
        reply = invoke(gw, "probe", {"action": "read", "path": str(secret)})
        assert reply["function_error"] == "Handled", secret
        assert "PermissionError" in reply["error"]


def test_handler_exception_is_reported_and_next_message_still_works(gw: RunningGateway) -> None:
    failed = invoke(gw, "probe", {"action": "raise"})
    assert failed == {"result": None, "function_error": "Handled", "error": "ValueError: the probe was asked to fail"}
    assert invoke(gw, "probe", {"action": "echo", "n": 1})["result"] == {"echo": {"action": "echo", "n": 1}}
    log = gw.paths.function_log("probe").read_text()
    assert "the probe was asked to fail" in log


def test_binary_payload_arrives_as_bytes(gw: RunningGateway) -> None:
    reply = invoke(gw, "probe", b"\x00\x01\xffnot json")
    assert reply["result"] == {"type": "bytes", "length": 11, "subject": "millgate/fn/probe/invoke"}


def test_timeout_kills_and_replaces_the_worker(gw: RunningGateway) -> None:
    before = invoke(gw, "probe", {"action": "whoami"})["result"]["pid"]
    timed_out = invoke(gw, "probe", {"action": "sleep", "s": 10})
    assert timed_out["function_error"] == "Unhandled"
    assert "timed out after 2 seconds" in timed_out["error"]
    after = invoke(gw, "probe", {"action": "whoami"})["result"]["pid"]
    assert after != before
    assert not Path(f"/proc/{before}").exists()
    wait_until(lambda: function_status(gw, "probe")["timeouts"] >= 1, 5, "the timeout in status")


def test_memory_limit_breach_kills_only_that_worker(gw: RunningGateway) -> None:
    pool_pid = invoke(gw, "pool", {})["result"]["pid"]
    before = invoke(gw, "probe", {"action": "whoami"})["result"]["pid"]
    breach = invoke(gw, "probe", {"action": "alloc", "mb": 512})
    assert breach["function_error"] in ("Handled", "Unhandled")
    assert "MemoryError" in str(breach["error"]) or "died" in str(breach["error"])
    after = invoke(gw, "probe", {"action": "whoami"})["result"]["pid"]
    assert after != before
    assert invoke(gw, "pool", {})["result"]["pid"] == pool_pid  # the other function's worker lives on


def test_pool_grows_with_backlog_up_to_max_concurrency_then_shrinks(gw: RunningGateway) -> None:
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(invoke(gw, "pool", {"s": 1.0}))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pids = {r["result"]["pid"] for r in results}
    assert 2 <= len(pids) <= 4
    wait_until(lambda: function_status(gw, "pool")["workers"] == 0, 10, "idle workers to be stopped")


def test_full_input_queue_rejects_and_counts(gw: RunningGateway) -> None:
    operator = gw.client("operator")
    for _ in range(12):
        operator.publish("tiny/in", json.dumps({"s": 0.5}), qos=1).wait_for_publish(5)
    wait_until(lambda: function_status(gw, "tiny")["rejected"] >= 5, 10, "rejections to be counted")
    status = function_status(gw, "tiny")
    assert status["queue_depth"] <= 2


def test_function_with_missing_device_fails_alone(gw: RunningGateway) -> None:
    reply = invoke(gw, "broken", {})
    assert reply["function_error"] == "Unhandled"
    assert "/dev/millgate-test-missing does not exist" in reply["error"]
    status = function_status(gw, "broken")
    assert status["function_state"] == "failed"
    assert invoke(gw, "pool", {})["function_error"] is None


def test_sdk_publish_and_invoke_from_inside_a_function(gw: RunningGateway) -> None:
    operator = gw.client("operator")
    seen: list[dict] = []
    operator.on_message = lambda _c, _u, m: seen.append(json.loads(m.payload))
    operator.subscribe("results/probe", qos=1)
    time.sleep(0.3)
    assert invoke(gw, "probe", {"action": "publish"})["result"] == "published"
    wait_until(lambda: seen, 5, "the function's publish")
    assert seen[0]["from"] == "probe"
    nested = invoke(gw, "probe", {"action": "invoke"})
    assert nested["function_error"] is None, nested
    assert isinstance(nested["result"]["pid"], int)


def test_long_lived_function_keeps_order_over_10000_messages(gw: RunningGateway) -> None:
    operator = gw.client("operator")
    summary: list[dict] = []
    operator.on_message = lambda _c, _u, m: summary.append(json.loads(m.payload))
    operator.subscribe("results/order", qos=1)
    time.sleep(0.3)
    infos = [operator.publish("order/in", json.dumps({"seq": seq}), qos=1) for seq in range(10_000)]
    for info in infos:
        info.wait_for_publish(30)
    operator.publish("order/in", json.dumps({"seq": -1}), qos=1).wait_for_publish(5)
    wait_until(lambda: summary, 60, "the order summary")
    assert summary[0] == {"last": 9999, "count": 10_000, "violations": 0}
