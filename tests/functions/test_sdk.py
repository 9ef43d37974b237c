"""The SDK from inside real functions (issue 4 item 6) on a real gateway: shadow calls against the core's
shadow service, keeping a caller's clientToken, AWS's rejections as ShadowRejected
(../shared/aws-shadow-semantics.md); `invoke` of a long-lived function, waiting for its answer or not.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures.gateway import RunningGateway, functions_gateway, wait_until
from tests.functions.test_runtime import invoke

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

SHADOWER = """
from functions import sdk

def rejected(call):
    try:
        call()
    except sdk.ShadowRejected as exc:
        return {"code": exc.code, "message": exc.message, "document": exc.document}
    return None

def function_handler(event, context):
    assert not context.client_context.custom["subject"].startswith("$aws/"), "a shadow answer invoked it"
    thing, name = event["thing"], event.get("name")
    out = {}
    out["update"] = sdk.update_thing_shadow(
        thing, {"state": {"reported": {"rpm": 10}}, "clientToken": "caller-token-1"}, name=name)
    out["get"] = sdk.get_thing_shadow(thing, name=name)
    out["conflict"] = rejected(lambda: sdk.update_thing_shadow(
        thing, {"state": {"reported": {"rpm": 11}}, "version": 99, "clientToken": "caller-token-2"}, name=name))
    out["bad_token"] = rejected(lambda: sdk.update_thing_shadow(
        thing, {"state": {"reported": {"rpm": 12}}, "clientToken": "x" * 65}, name=name))
    out["delete"] = sdk.delete_thing_shadow(thing, name=name, client_token="caller-token-3")
    out["after_delete"] = rejected(lambda: sdk.get_thing_shadow(thing, name=name))
    return out
"""

ANSWERER = """
import os
from functions import sdk

def function_handler(event, context):
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    if event.get("publish"):
        sdk.publish("results/answerer", {"got": event}, qos=1)
    return {"echo": event, "pid": os.getpid()}
"""

CALLER = """
from functions import sdk

def function_handler(event, context):
    action = event["action"]
    if action == "wait":
        return sdk.invoke("answerer", {"n": 1})
    if action == "fail":
        try:
            sdk.invoke("answerer", {"fail": True})
        except sdk.FunctionError as exc:
            return {"kind": exc.kind, "detail": exc.detail}
        return "no error"
    if action == "no-wait":
        return {"returned": sdk.invoke("answerer", {"n": 2, "publish": True}, wait=False)}
"""

GATEWAY = """
[gateway]
thing_name = "sdk-test"
status_interval_s = 0.5

[[functions]]
name = "shadower"
code = "functions/shadower"
handler = "shadower.function_handler"
run_as = "1011:1011"
timeout_s = 30

[[functions]]
name = "answerer"
code = "functions/answerer"
handler = "answerer.function_handler"
lifecycle = "long-lived"
run_as = "1012:1012"

[[functions]]
name = "caller"
code = "functions/caller"
handler = "caller.function_handler"
run_as = "1013:1013"
timeout_s = 30

# a function's shadow calls need only the routes to the service on the request topics: the answers to
# them are the function's to read (gateway/acl.py), and no answer invokes it
[[subscriptions]]
source = "function:shadower"
target = "shadow"
topic = "$aws/things/+/shadow/+"

[[subscriptions]]
source = "function:shadower"
target = "shadow"
topic = "$aws/things/+/shadow/name/+/+"

[[subscriptions]]
source = "function:answerer"
target = "device:tester"
topic = "results/answerer"
"""

CODE = {"shadower": SHADOWER, "answerer": ANSWERER, "caller": CALLER}
LONG_LIVED = ("fn-answerer",)


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with functions_gateway("mgsdk", GATEWAY, CODE, expect=("broker", "core", *LONG_LIVED)) as running:
        yield running


@pytest.mark.parametrize("name", [None, "recipe"], ids=["classic", "named"])
def test_sdk_shadow_calls_from_inside_a_function(gw: RunningGateway, name: str | None) -> None:
    thing = f"press-{uuid.uuid4().hex[:6]}"
    reply = invoke(gw, "shadower", {"thing": thing, "name": name}, timeout_s=40)
    assert reply["function_error"] is None, reply
    out = reply["result"]
    # update/accepted: the request's state with metadata, version 1, the caller's own clientToken [S1]
    assert out["update"]["state"] == {"reported": {"rpm": 10}}
    assert out["update"]["version"] == 1
    assert out["update"]["clientToken"] == "caller-token-1"
    # get/accepted: the whole document; without a caller token the SDK made one
    assert out["get"]["state"] == {"reported": {"rpm": 10}} and out["get"]["version"] == 1
    assert out["get"]["clientToken"] and out["get"]["clientToken"] != "caller-token-1"
    # a stale `version` is refused 409 `Version conflict`, the caller's token echoed [aws-shadow-semantics 6]
    assert out["conflict"]["code"] == 409 and out["conflict"]["message"] == "Version conflict"
    assert out["conflict"]["document"]["clientToken"] == "caller-token-2"
    # a token over 64 bytes is AWS's 400 `Invalid clientToken`, at once rather than after a timeout
    assert out["bad_token"]["code"] == 400 and out["bad_token"]["message"] == "Invalid clientToken"
    assert out["delete"]["version"] == 1 and out["delete"]["clientToken"] == "caller-token-3"
    missing = thing if name is None else name
    assert out["after_delete"]["code"] == 404
    assert out["after_delete"]["message"] == f"No shadow exists with name: '{missing}'"
    # the function's update never touched the other shadow of the thing
    other = gw.cli("shadow", "get", thing, *(() if name else ("--name", "recipe")))
    assert other.returncode == 1 and json.loads(other.stdout)["code"] == 404


def test_invoke_of_a_long_lived_function_waits_for_its_answer(gw: RunningGateway) -> None:
    answer = invoke(gw, "answerer", {"direct": True})
    assert answer["function_error"] is None and answer["result"]["echo"] == {"direct": True}, answer
    nested = invoke(gw, "caller", {"action": "wait"})
    assert nested["function_error"] is None, nested
    assert nested["result"]["echo"] == {"n": 1} and nested["result"]["pid"] == answer["result"]["pid"]
    # the handler's exception reaches the invoker as Greengrass v1's 'Handled' function error
    failed = invoke(gw, "caller", {"action": "fail"})
    assert failed["result"]["kind"] == "Handled" and "asked to fail" in failed["result"]["detail"], failed


def test_invoke_of_a_long_lived_function_without_waiting(gw: RunningGateway) -> None:
    operator = gw.client("operator")
    seen: list[dict] = []
    operator.on_message = lambda _c, _u, m: seen.append(json.loads(m.payload))
    operator.subscribe("results/answerer", qos=1)
    time.sleep(0.3)
    reply = invoke(gw, "caller", {"action": "no-wait"})
    assert reply["function_error"] is None and reply["result"] == {"returned": None}, reply
    wait_until(lambda: seen, 10, "the long-lived function to get the event invocation")
    assert seen[0] == {"got": {"n": 2, "publish": True}}
