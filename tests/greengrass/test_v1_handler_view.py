"""What a Greengrass v1 handler sees of its surroundings on a real gateway: its own top-level modules (a
`gateway.py`, a `functions.py`, a bundled `paho` package) rather than millgate's, on-demand and
long-lived; and a direct `lambda.invoke`'s client context exactly as the caller sent it, none when it sent
none (contract section 3.1: the subject is only a routed message's), whatever qualifier it names.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.gateway import RunningGateway, free_port, start_gateway
from tests.functions.test_runtime import invoke

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

ECHO_ARN = "arn:aws:lambda:us-west-2:123456789012:function:Echo"
ECHO_VERSION = "3"

# imported at module level, where millgate's own modules were already loaded in the worker
OWN_MODULES_HANDLER = """
import functions
import gateway
import paho.mqtt.client as mqtt

def function_handler(event, context):
    return {"gateway": gateway.WHOSE, "functions": functions.WHOSE, "paho": mqtt.Client("x").whose()}
"""

OWN_MODULES = {
    "gateway.py": 'WHOSE = "the function\'s own gateway.py"\n',
    "functions.py": 'WHOSE = "the function\'s own functions.py"\n',
    "paho/__init__.py": "",
    "paho/mqtt/__init__.py": "",
    # paho-mqtt 1.x's signature: Client(client_id); paho-mqtt 2.x wants a callback API version first
    "paho/mqtt/client.py": (
        "class Client:\n"
        "    def __init__(self, client_id, clean_session=None, userdata=None):\n"
        "        self.client_id = client_id\n\n"
        "    def whose(self):\n"
        '        return "the function\'s own paho " + self.client_id\n'
    ),
}

ECHO = """
def function_handler(event, context):
    client_context = context.client_context
    return {
        "client": client_context.client,
        "custom": client_context.custom,
        "env": client_context.env,
        "invoked_function_arn": context.invoked_function_arn,
        "function_version": context.function_version,
    }
"""

CALLER = """
import base64, json, os
import greengrasssdk

lam = greengrasssdk.client("lambda")

def function_handler(event, context):
    arguments = {"FunctionName": os.environ["ECHO_ARN"], "Payload": json.dumps({"from": "caller"})}
    if "client_context" in event:
        arguments["ClientContext"] = base64.b64encode(json.dumps(event["client_context"]).encode())
    if "qualifier" in event:
        arguments["Qualifier"] = event["qualifier"]
    answer = lam.invoke(**arguments)
    payload = answer["Payload"]
    payload = payload if isinstance(payload, bytes) else payload.read()
    return {"error": answer["FunctionError"], "echo": json.loads(payload)}
"""


def _function(name: str, uid: int, port: int, lifecycle: str = "on-demand", extra: str = "") -> str:
    return f"""
[[functions]]
name = "{name}"
code = "functions/{name}"
handler = "{name}.function_handler"
lifecycle = "{lifecycle}"
runtime = "greengrass-v1"
run_as = "{uid}:{uid}"
timeout_s = 5
daemon_port = {port}
{extra}"""


@pytest.fixture(scope="module")
def gw(greengrasssdk_dir: Path) -> Iterator[RunningGateway]:
    base = Path("/tmp") / f"mgggview{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    config = base / "etc"
    sources = {
        "OwnLong": {"OwnLong.py": OWN_MODULES_HANDLER, **OWN_MODULES},
        "OwnOnDemand": {"OwnOnDemand.py": OWN_MODULES_HANDLER, **OWN_MODULES},
        "Echo": {"Echo.py": ECHO},
        "Caller": {"Caller.py": CALLER},
    }
    for name, files in sources.items():
        code = config / "functions" / name
        for path, source in files.items():
            (code / path).parent.mkdir(parents=True, exist_ok=True)
            (code / path).write_text(source)
    shutil.copytree(greengrasssdk_dir / "greengrasssdk", config / "functions" / "Caller" / "greengrasssdk")
    port = free_port()
    functions = (
        _function("OwnLong", 1061, port, "long-lived")
        + _function("OwnOnDemand", 1062, port)
        + _function("Echo", 1063, port, extra=f'arn = "{ECHO_ARN}:{ECHO_VERSION}"\n')
        + _function("Caller", 1064, port, extra=f'environment = {{ ECHO_ARN = "{ECHO_ARN}" }}\n')
    )
    (config / "gateway.toml").write_text(f'[gateway]\nthing_name = "gg-view"\nstatus_interval_s = 0.5\n{functions}')
    running = start_gateway(config, base / "s", expect=("broker", "core", "fn-OwnLong"))
    yield running
    running.stop()
    running.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("function", ["OwnOnDemand", "OwnLong"])
def test_handler_imports_its_own_gateway_functions_and_paho_modules_not_millgates(
    gw: RunningGateway, function: str
) -> None:
    answer = invoke(gw, function, {})
    assert answer["function_error"] is None, answer
    assert answer["result"] == {
        "gateway": "the function's own gateway.py",
        "functions": "the function's own functions.py",
        "paho": "the function's own paho x",
    }


def test_direct_invoke_hands_the_callers_client_context_over_unchanged(gw: RunningGateway) -> None:
    sent = {"client": {"installation_id": "press-7"}, "custom": {"line": "1", "shift": "B"}, "env": {"locale": "de"}}
    answer = invoke(gw, "Caller", {"client_context": sent})
    assert answer["function_error"] is None, answer
    echo = answer["result"]["echo"]
    assert answer["result"]["error"] == ""
    assert {key: echo[key] for key in ("client", "custom", "env")} == sent


def test_direct_invoke_without_a_client_context_gives_the_handler_none(gw: RunningGateway) -> None:
    answer = invoke(gw, "Caller", {})
    assert answer["function_error"] is None, answer
    echo = answer["result"]["echo"]
    # no subject invented: only a message routed by a subscription has one (contract sections 3.1, 4.6)
    assert (echo["client"], echo["custom"], echo["env"]) == (None, {}, None)


@pytest.mark.parametrize("qualifier", [None, ECHO_VERSION, "7", "$LATEST"])
def test_invoke_qualifier_selects_nothing_the_deployed_version_answers(
    gw: RunningGateway, qualifier: str | None
) -> None:
    """A gateway runs one deployed version of each function and has no aliases (a local ARN's qualifier is
    the code version, which each code deployment changes): any qualifier, or none, reaches that version."""
    answer = invoke(gw, "Caller", {} if qualifier is None else {"qualifier": qualifier})
    assert answer["function_error"] is None, answer
    echo = answer["result"]["echo"]
    assert answer["result"]["error"] == ""
    assert (echo["invoked_function_arn"], echo["function_version"]) == (f"{ECHO_ARN}:{ECHO_VERSION}", ECHO_VERSION)
