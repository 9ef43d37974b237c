"""Unmodified Greengrass v1 functions on a real gateway: zips with the real greengrasssdk 1.6.1 inside, a
v1 group export imported with `millgate import greengrass-v1`, run under `millgate run` (supervisord,
mosquitto, the core's dispatcher and v1 API), every behaviour checked by what arrives on the broker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as paho
import pytest
from moto.server import ThreadedMotoServer

from gateway.greengrass_import import ImportOptions, import_group
from tests.fixtures.gateway import RunningGateway, free_port, start_gateway, wait_until
from tests.greengrass.v1_group import (
    GROUP_ID,
    GROUP_NAME,
    REGION,
    V1Function,
    function_arn,
    package,
    thing_arn,
    write_export,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

CORE = "gg-core-1"
TESTER = "tester"
GATEWAY_KEY = "AKIDMILLGATEGATEWAY1"

HEARTBEAT = """
import json, logging, os, threading, time
import greengrasssdk

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)
client = greengrasssdk.client("iot-data")
count = [0]

def publish_forever():
    count[0] += 1
    try:
        client.publish(topic="gg/heartbeat", payload=json.dumps({
            "n": count[0], "pid": os.getpid(), "thing": os.environ["AWS_IOT_THING_NAME"],
            "arn": os.environ["MY_FUNCTION_ARN"]}))
    except Exception as e:
        logger.error("Failed to publish message: " + repr(e))
    threading.Timer(0.2, publish_forever).start()

publish_forever()

def function_handler(event, context):
    time.sleep(event.get("sleep", 0))
    client.publish(topic="gg/heartbeat/handled", payload=json.dumps(
        {"event": event, "subject": context.client_context.custom["subject"], "pid": os.getpid()}))
"""

ECHO = """
import json, os
import greengrasssdk

client = greengrasssdk.client("iot-data")

def function_handler(event, context):
    client.publish(topic="gg/echo/out", payload=json.dumps({
        "event": event,
        "subject": context.client_context.custom.get("subject"),
        "custom": context.client_context.custom,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "aws_request_id": context.aws_request_id,
        "env": {k: os.environ.get(k) for k in (
            "MY_FUNCTION_ARN", "AWS_IOT_THING_NAME", "AWS_IOT_THING_ARN", "GG_DAEMON_PORT", "ENCODING_TYPE",
            "GGC_MAX_INTERFACE_VERSION", "AWS_REGION", "AWS_GG_RESOURCE_PREFIX", "ROUTER_FUNCTION_ARN",
            "SHADOW_FUNCTION_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "LINE", "SECRETS_MANAGER_FUNCTION_ARN",
            "GGC_VERSION", "AWS_GREENGRASS_GROUP_NAME", "GROUP_ID", "AWS_DEFAULT_REGION")},
        "uid": os.getuid(),
    }))
    return {"echo": event}
"""

SHADOWS = """
import json
import greengrasssdk

client = greengrasssdk.client("iot-data")

def function_handler(event, context):
    thing, op = event["thing"], event["op"]
    try:
        if op == "get":
            answer = client.get_thing_shadow(thingName=thing)
        elif op == "update":
            answer = client.update_thing_shadow(thingName=thing, payload=json.dumps(event["document"]))
        else:
            answer = client.delete_thing_shadow(thingName=thing)
        outcome = {"ok": True, "payload": json.loads(answer["payload"])}
    except Exception as e:
        outcome = {"ok": False, "type": type(e).__name__, "error": str(e)}
    client.publish(topic="gg/shadow/out", payload=json.dumps(dict(outcome, op=op, tag=event.get("tag"))))
"""

CALLER = """
import base64, json, os
import greengrasssdk
from greengrass_ipc_python_sdk.ipc_client import IPCClient

iot = greengrasssdk.client("iot-data")
lam = greengrasssdk.client("lambda")

def report(document):
    iot.publish(topic="gg/caller/out", payload=json.dumps(document))

def function_handler(event, context):
    action, tag = event["action"], event.get("tag")
    if action == "sync":
        answer = lam.invoke(FunctionName=os.environ["ECHO_ARN"], Payload=json.dumps({"from": "caller", "tag": tag}))
        report({"tag": tag, "payload": answer["Payload"].read().decode(), "error": answer["FunctionError"]})
    elif action == "async":
        answer = lam.invoke(FunctionName=os.environ["ECHO_ARN"], InvocationType="Event",
                            Payload=json.dumps({"from": "caller-async", "tag": tag}))
        report({"tag": tag, "payload": answer["Payload"].decode(), "error": answer["FunctionError"]})
    elif action == "fail":
        answer = lam.invoke(FunctionName=os.environ["FAILER_ARN"], Payload=json.dumps({"tag": tag}))
        report({"tag": tag, "payload": answer["Payload"].decode(), "error": answer["FunctionError"]})
    elif action == "sleep":
        answer = lam.invoke(FunctionName=os.environ["SLEEPER_ARN"], Payload=json.dumps(event))
        payload = answer["Payload"]
        payload = payload if isinstance(payload, bytes) else payload.read()
        report({"tag": tag, "payload": payload.decode(), "error": answer["FunctionError"]})
    elif action == "spoof":
        # the echo function's ARN as the source: the core must see through it
        context_b64 = base64.b64encode(json.dumps(
            {"custom": {"source": os.environ["ECHO_ARN"], "subject": "gg/echo/out"}}).encode())
        try:
            IPCClient().post_work("arn:aws:lambda:::function:GGRouter", b'{"spoofed": true}', context_b64, "Event")
            report({"tag": tag, "spoof": "accepted"})
        except Exception as e:
            report({"tag": tag, "spoof": "refused", "error": str(e)})
    elif action == "forbidden":
        iot.publish(topic="gg/forbidden", payload="best effort")
        try:
            iot.publish(topic="gg/forbidden", payload="all or error", queueFullPolicy="AllOrException")
            report({"tag": tag, "all_or_error": "accepted"})
        except Exception as e:
            report({"tag": tag, "all_or_error": type(e).__name__, "error": str(e)})
    elif action == "shadow":
        # Caller has no subscription to GGShadowService: v1 refused this, and so must the core
        try:
            iot.update_thing_shadow(thingName=event["thing"], payload=json.dumps({"state": {"reported": {"x": 1}}}))
            report({"tag": tag, "shadow": "accepted"})
        except Exception as e:
            report({"tag": tag, "shadow": type(e).__name__, "error": str(e)})
    elif action == "secret":
        try:
            greengrasssdk.client("secretsmanager").get_secret_value(SecretId="db-password")
            report({"tag": tag, "secret": "returned"})
        except Exception as e:
            report({"tag": tag, "secret": type(e).__name__, "error": str(e)})
"""

SLEEPER = """
import json, os, time
import greengrasssdk

client = greengrasssdk.client("iot-data")

def function_handler(event, context):
    client.publish(topic="gg/sleeper/out", payload=json.dumps({"tag": event["tag"], "pid": os.getpid()}))
    time.sleep(event["seconds"])
    return {"slept": event["seconds"], "pid": os.getpid()}
"""

# A v1 function as many were zipped: with the console SDK tarball's own, older copies of the core's
# modules beside it (only the first four env vars, no build_function_arn, the IPC port fixed to 8000).
OLD_BUNDLE = """
import json, os
import greengrasssdk

iot = greengrasssdk.client("iot-data")
lam = greengrasssdk.client("lambda")

def function_handler(event, context):
    answer = lam.invoke(FunctionName=os.environ["ECHO_ARN"], Payload=json.dumps({"from": "old-bundle"}))
    iot.publish(topic="gg/old/out", payload=json.dumps({
        "tag": event.get("tag"), "subject": context.client_context.custom["subject"],
        "echo": json.loads(answer["Payload"].read()), "error": answer["FunctionError"]}))
"""

OLD_ENV_VARS = """import os

AUTH_TOKEN = os.getenv('AWS_CONTAINER_AUTHORIZATION_TOKEN')
MY_FUNCTION_ARN = os.getenv('MY_FUNCTION_ARN')
SHADOW_FUNCTION_ARN = os.getenv('SHADOW_FUNCTION_ARN')
ROUTER_FUNCTION_ARN = os.getenv('ROUTER_FUNCTION_ARN')
"""

OLD_ARN_FIELDS = """import re

ARN_FIELD_REGEX = (
    'arn:aws:lambda:([a-z]{2}-[a-z]+-\\d{1}):(\\d{12}):function:([a-zA-Z0-9-_]+)'
    '(?::(\\$LATEST|[a-zA-Z0-9-_]+))?'
)


class FunctionArnFields:
    def __init__(self, function_arn_string):
        match = re.match(ARN_FIELD_REGEX, function_arn_string)
        if match is None:
            raise ValueError('Cannot parse given string as a function ARN.')
        self.region, self.account_id, self.name, self.qualifier = match.groups()
        self.unqualified_arn = 'arn:aws:lambda:{}:{}:function:{}'.format(self.region, self.account_id, self.name)
"""

OLD_IPC_CLIENT = """import json
import urllib.request

from greengrass_common.env_vars import AUTH_TOKEN

HEADER_INVOCATION_ID = 'X-Amz-InvocationId'
HEADER_CLIENT_CONTEXT = 'X-Amz-Client-Context'
HEADER_AUTH_TOKEN = 'Authorization'
HEADER_INVOCATION_TYPE = 'X-Amz-Invocation-Type'
HEADER_FUNCTION_ERR_TYPE = 'X-Amz-Function-Error'


class IPCException(Exception):
    pass


class WorkItem(object):
    def __init__(self, invocation_id, payload, client_context):
        self.invocation_id = invocation_id
        self.payload = payload
        self.client_context = client_context


class GetWorkResultOutput(object):
    def __init__(self, payload, func_err):
        self.payload = payload
        self.func_err = func_err


class IPCClient:
    def __init__(self, endpoint='localhost', port=8000):
        self.endpoint = endpoint
        self.port = 8000

    def _url(self, function_arn):
        return 'http://{}:{}/2016-11-01/functions/{}'.format(self.endpoint, self.port, function_arn)

    def _open(self, request):
        request.add_header(HEADER_AUTH_TOKEN, AUTH_TOKEN)
        try:
            return urllib.request.urlopen(request)
        except Exception as e:
            raise IPCException(str(e))

    def post_work(self, function_arn, payload, client_context, invocation_type='RequestResponse'):
        request = urllib.request.Request(self._url(function_arn), payload or b'')
        request.add_header(HEADER_CLIENT_CONTEXT, client_context)
        request.add_header(HEADER_INVOCATION_TYPE, invocation_type)
        return self._open(request).info().get(HEADER_INVOCATION_ID)

    def get_work(self, function_arn):
        response = self._open(urllib.request.Request(self._url(function_arn) + '/work'))
        info = response.info()
        return WorkItem(info.get(HEADER_INVOCATION_ID), response.read(), info.get(HEADER_CLIENT_CONTEXT))

    def post_work_result(self, function_arn, work_item):
        request = urllib.request.Request(self._url(function_arn) + '/work', work_item.payload or b'')
        request.add_header(HEADER_INVOCATION_ID, work_item.invocation_id)
        self._open(request)

    def post_handler_err(self, function_arn, invocation_id, handler_err):
        request = urllib.request.Request(
            self._url(function_arn) + '/work', json.dumps({'errorMessage': handler_err}).encode('utf-8'))
        request.add_header(HEADER_INVOCATION_ID, invocation_id)
        request.add_header(HEADER_FUNCTION_ERR_TYPE, 'Handled')
        self._open(request)

    def get_work_result(self, function_arn, invocation_id):
        request = urllib.request.Request(self._url(function_arn))
        request.add_header(HEADER_INVOCATION_ID, invocation_id)
        response = self._open(request)
        return GetWorkResultOutput(response.read(), response.info().get(HEADER_FUNCTION_ERR_TYPE, ''))
"""

OLD_CORE_MODULES = {
    "greengrass_common/__init__.py": "",
    "greengrass_common/env_vars.py": OLD_ENV_VARS,
    "greengrass_common/function_arn_fields.py": OLD_ARN_FIELDS,
    "greengrass_ipc_python_sdk/__init__.py": "",
    "greengrass_ipc_python_sdk/ipc_client.py": OLD_IPC_CLIENT,
}

FAILER = """
def function_handler(event, context):
    raise ValueError("boom from failer " + str(event.get("tag")))
"""

BINARY = """
import json
import greengrasssdk

client = greengrasssdk.client("iot-data")

def function_handler(event, context):
    client.publish(topic="gg/binary/out", payload=json.dumps({"type": type(event).__name__, "hex": event.hex()}))
    return event[::-1]
"""

AWSUSER = """
import json, os, boto3, greengrasssdk

client = greengrasssdk.client("iot-data")

def function_handler(event, context):
    session = boto3.session.Session()
    credentials = session.get_credentials()
    s3 = session.client("s3", endpoint_url=os.environ["MOTO_URL"])
    s3.put_object(Bucket=event["bucket"], Key=event["key"], Body=b"from a v1 function")
    client.publish(topic="gg/aws/out", payload=json.dumps({
        "method": credentials.method, "access_key": credentials.get_frozen_credentials().access_key,
        "key": event["key"], "tag": event.get("tag")}))
"""


HOG = """
import json, os, threading
import greengrasssdk

client = greengrasssdk.client("iot-data")
kept = []
# a timer thread started at import, as many v1 functions have: it keeps the process up after the runtime
# gives up on it, so only the core can make sure the next message does not go to this worker
threading.Timer(3600, lambda: None).start()

def function_handler(event, context):
    client.publish(topic="gg/hog/out", payload=json.dumps({"tag": event["tag"], "pid": os.getpid()}))
    if event.get("mode") == "huge":
        kept.append(bytearray(1 << 40))  # 1 TiB at once: MemoryError, whatever caps the worker
    elif event.get("mode") == "grow":
        for _ in range(64):  # 1 GiB in touched 16 MiB blocks, far past the 64 MB limit
            kept.append(b"x" * (16 << 20))
    return {"pid": os.getpid()}
"""


class Broker:
    """The operator's view of the local broker: every message on `gg/#` and the shadow topics, by topic."""

    def __init__(self, gw: RunningGateway):
        self.client = gw.client("operator")
        self.received: dict[str, list[bytes]] = defaultdict(list)
        self.changed = threading.Condition()
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe([("gg/#", 1), ("$aws/things/+/shadow/#", 1)])
        assert subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self.changed:
            self.received[message.topic].append(bytes(message.payload))
            self.changed.notify_all()

    def publish(self, topic: str, payload: Any) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, body, qos=1).wait_for_publish(5)

    def wait_for(self, topic: str, match: Any = None, timeout_s: float = 15) -> dict[str, Any]:
        """The first JSON message on `topic` for which `match` holds."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                for raw in self.received[topic]:
                    try:
                        document = json.loads(raw)
                    except ValueError:
                        continue
                    if match is None or match(document):
                        return document
                left = deadline - time.monotonic()
                assert left > 0, f"nothing matching on {topic}; got {self.received[topic][-5:]}"
                self.changed.wait(left)

    def ask(self, topic: str, out: str, event: dict[str, Any]) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:8]
        self.publish(topic, {**event, "tag": tag})
        return self.wait_for(out, lambda d: d.get("tag") == tag)


FUNCTIONS = [
    V1Function("Heartbeat", HEARTBEAT, pinned=True, timeout=2),
    V1Function("Echo", ECHO, variables={"LINE": "line-1"}, resources=[("vol-recipes", "ro")]),
    V1Function("ShadowClient", SHADOWS),
    V1Function(
        "Caller",
        CALLER,
        timeout=10,
        variables={
            "ECHO_ARN": function_arn("Echo"),
            "FAILER_ARN": function_arn("Failer"),
            "SLEEPER_ARN": function_arn("Sleeper"),
        },
    ),
    V1Function("Failer", FAILER),
    V1Function("Sleeper", SLEEPER, timeout=1),
    V1Function("OldBundle", OLD_BUNDLE, variables={"ECHO_ARN": function_arn("Echo")}, bundled=OLD_CORE_MODULES),
    V1Function("BinaryEcho", BINARY, encoding="binary"),
    V1Function("AwsUser", AWSUSER, timeout=30, memory_kb=262144, run_as=(1102, 1102)),
    V1Function("Hog", HOG, timeout=30, memory_kb=65536),
]


def _subscriptions() -> list[tuple[str, str, str]]:
    tester = thing_arn(TESTER)
    subs = [
        (tester, "gg/heartbeat/in", function_arn("Heartbeat")),
        (function_arn("Heartbeat"), "gg/heartbeat/#", tester),
        (tester, "gg/echo/in/#", function_arn("Echo")),
        (function_arn("Echo"), "gg/echo/out", tester),
        (tester, "gg/shadow/in", function_arn("ShadowClient")),
        (function_arn("ShadowClient"), "gg/shadow/out", tester),
        # v1 needed a subscription to GGShadowService for every shadow call a function made
        (function_arn("ShadowClient"), "$aws/things/+/shadow/#", "GGShadowService"),
        (tester, "gg/caller/in", function_arn("Caller")),
        (function_arn("Caller"), "gg/caller/out", tester),
        (function_arn("Sleeper"), "gg/sleeper/out", tester),
        (tester, "gg/old/in", function_arn("OldBundle")),
        (function_arn("OldBundle"), "gg/old/out", tester),
        (tester, "gg/binary/in", function_arn("BinaryEcho")),
        (function_arn("BinaryEcho"), "gg/binary/out", tester),
        (tester, "gg/aws/in", function_arn("AwsUser")),
        (tester, "gg/hog/in", function_arn("Hog")),
        (function_arn("Hog"), "gg/hog/out", tester),
        (function_arn("AwsUser"), "gg/aws/out", tester),
        (tester, f"$aws/things/{TESTER}/shadow/update", "GGShadowService"),
        ("GGShadowService", f"$aws/things/{TESTER}/shadow/update/accepted", tester),
    ]
    return subs


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def gateway_credentials() -> Iterator[None]:
    """The gateway's own AWS credentials, in its environment (the standard chain's first link)."""
    values = {
        "AWS_ACCESS_KEY_ID": GATEWAY_KEY,
        "AWS_SECRET_ACCESS_KEY": "gateway-secret",
        "AWS_DEFAULT_REGION": REGION,
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def imported(greengrasssdk_dir: Path, moto_url: str) -> Iterator[tuple[Path, Path, int]]:
    """(base dir, config dir, daemon port): the group exported, packaged and imported."""
    base = Path("/tmp") / f"mggg{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    recipes = base / "recipes"
    recipes.mkdir(mode=0o755)
    (recipes / "r1.json").write_text("{}")
    functions = [
        dataclasses.replace(f, variables={**f.variables, **({"MOTO_URL": moto_url} if f.name == "AwsUser" else {})})
        for f in FUNCTIONS
    ]
    zips = base / "zips"
    zips.mkdir()
    for function in functions:
        package(function, greengrasssdk_dir, zips)
    resources = [
        {
            "Id": "vol-recipes",
            "Name": "recipes volume",
            "ResourceDataContainer": {
                "LocalVolumeResourceData": {
                    "SourcePath": str(recipes),
                    "DestinationPath": str(recipes),
                    "GroupOwnerSetting": {"AutoAddGroupOwner": False},
                }
            },
        },
        {
            "Id": "secret-db",
            "Name": "db-password",
            "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": "arn:aws:secretsmanager:x"}},
        },
    ]
    ip_detector = {
        "Id": "ipdetector",
        "FunctionArn": "arn:aws:lambda:::function:GGIPDetector:1",
        "FunctionConfiguration": {"Environment": {}, "MemorySize": 32768, "Pinned": True, "Timeout": 3},
    }
    write_export(base / "export", CORE, functions, _subscriptions(), [TESTER], resources, [ip_detector])
    port = free_port()
    import_group(base / "export", base / "etc", zips, ImportOptions(daemon_port=port))
    yield base, base / "etc", port
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def gw(imported: tuple[Path, Path, int], gateway_credentials: None) -> Iterator[RunningGateway]:
    base, config, _ = imported
    text = (config / "gateway.toml").read_text()
    text = text.replace("[gateway]\n", "[gateway]\nstatus_interval_s = 0.5\n", 1)
    text = text.replace("[discovery]\n", f"[discovery]\nport = {free_port()}\n", 1)
    text = text.replace('name = "Failer"\n', 'name = "Failer"\nidle_s = 0.5\n', 1)  # idle stops happen in tests
    (config / "gateway.toml").write_text(text)
    running = start_gateway(config, base / "s", expect=("broker", "core", "fn-Heartbeat"))
    yield running
    running.stop()
    running.kill_leftovers()


@pytest.fixture(scope="module")
def broker(gw: RunningGateway) -> Broker:
    return Broker(gw)


def test_long_lived_function_publishes_from_its_import_time_loop(broker: Broker) -> None:
    first = broker.wait_for("gg/heartbeat")
    assert first["thing"] == CORE
    assert first["arn"] == function_arn("Heartbeat")
    later = broker.wait_for("gg/heartbeat", lambda d: d["n"] >= first["n"] + 3)
    assert later["pid"] == first["pid"]  # one worker, still the same process


def test_long_lived_function_handles_routed_messages_in_its_single_worker(broker: Broker) -> None:
    pid = broker.wait_for("gg/heartbeat")["pid"]
    for n in range(3):
        broker.publish("gg/heartbeat/in", {"n": n})
    for n in range(3):
        handled = broker.wait_for("gg/heartbeat/handled", lambda d, n=n: d["event"] == {"n": n})
        assert handled["subject"] == "gg/heartbeat/in"
        assert handled["pid"] == pid


def test_on_demand_echo_sees_the_subject_and_its_v1_context(broker: Broker, imported: tuple[Path, Path, int]) -> None:
    _, _, port = imported
    broker.publish("gg/echo/in/press-7", {"temperature": 81.5})
    echoed = broker.wait_for("gg/echo/out", lambda d: d["event"] == {"temperature": 81.5})
    assert echoed["subject"] == "gg/echo/in/press-7"
    assert echoed["function_name"] == "Echo"
    assert echoed["function_version"] == "1"
    assert echoed["invoked_function_arn"] == function_arn("Echo")
    assert echoed["aws_request_id"]
    assert echoed["uid"] == 1101  # DefaultConfig RunAs
    env = echoed["env"]
    assert env["MY_FUNCTION_ARN"] == function_arn("Echo")
    assert env["AWS_IOT_THING_NAME"] == CORE
    assert env["AWS_IOT_THING_ARN"] == thing_arn(CORE)
    assert env["GG_DAEMON_PORT"] == str(port)
    assert env["ENCODING_TYPE"] == "json"
    assert env["GGC_MAX_INTERFACE_VERSION"] == "1.5"
    assert env["AWS_REGION"] == REGION
    assert env["AWS_GG_RESOURCE_PREFIX"] == "/"
    assert env["ROUTER_FUNCTION_ARN"] == "arn:aws:lambda:::function:GGRouter"
    assert env["SHADOW_FUNCTION_ARN"] == "arn:aws:lambda:::function:GGShadowService"
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"http://localhost:{port}/2016-11-01/credentialprovider/"
    assert env["LINE"] == "line-1"
    # contract section 5
    assert env["SECRETS_MANAGER_FUNCTION_ARN"] == "arn:aws:lambda:::function:GGSecretManager:1"
    assert env["GGC_VERSION"] == "1.11.6"
    assert env["AWS_GREENGRASS_GROUP_NAME"] == GROUP_NAME  # group.json's Name, not its id
    assert env["GROUP_ID"] == GROUP_ID
    assert env["AWS_DEFAULT_REGION"] == REGION


def test_binary_encoding_hands_the_handler_raw_bytes(broker: Broker) -> None:
    broker.publish("gg/binary/in", b"\x00\xffnot json")
    seen = broker.wait_for("gg/binary/out")
    assert seen == {"type": "bytes", "hex": b"\x00\xffnot json".hex()}


def test_shadow_update_get_delete_through_the_sdk(broker: Broker) -> None:
    thing = f"press-{uuid.uuid4().hex[:6]}"
    updated = broker.ask(
        "gg/shadow/in",
        "gg/shadow/out",
        {"op": "update", "thing": thing, "document": {"state": {"reported": {"rpm": 1200}}}},
    )
    assert updated["ok"], updated
    assert updated["payload"]["state"] == {"reported": {"rpm": 1200}}
    assert updated["payload"]["version"] == 1
    assert "clientToken" not in updated["payload"]
    # the shadow service really answered on the broker, as for any device
    accepted = broker.wait_for(f"$aws/things/{thing}/shadow/update/accepted")
    assert accepted["state"] == {"reported": {"rpm": 1200}}
    document = broker.wait_for(f"$aws/things/{thing}/shadow/update/documents")
    assert document["current"]["state"]["reported"] == {"rpm": 1200}

    got = broker.ask("gg/shadow/in", "gg/shadow/out", {"op": "get", "thing": thing})
    assert got["ok"], got
    assert got["payload"]["state"] == {"reported": {"rpm": 1200}}
    assert got["payload"]["version"] == 1

    stale = {"state": {"desired": {"rpm": 0}}, "version": 7}
    conflict = broker.ask("gg/shadow/in", "gg/shadow/out", {"op": "update", "thing": thing, "document": stale})
    assert conflict["ok"] is False
    assert conflict["type"] == "ShadowError"
    assert conflict["error"] == 'Request for shadow state returned error code 409 with message "Version conflict"'
    rejected = broker.wait_for(f"$aws/things/{thing}/shadow/update/rejected")
    assert (rejected["code"], rejected["message"]) == (409, "Version conflict")

    deleted = broker.ask("gg/shadow/in", "gg/shadow/out", {"op": "delete", "thing": thing})
    assert deleted["ok"], deleted
    assert deleted["payload"]["version"] == 1
    broker.wait_for(f"$aws/things/{thing}/shadow/delete/accepted")

    gone = broker.ask("gg/shadow/in", "gg/shadow/out", {"op": "get", "thing": thing})
    assert gone["ok"] is False
    assert "error code 404" in gone["error"]


def test_shadow_call_without_a_subscription_is_refused_with_an_aws_error_document(
    broker: Broker, gw: RunningGateway
) -> None:
    thing = f"press-{uuid.uuid4().hex[:6]}"
    topic = f"$aws/things/{thing}/shadow/update"
    answer = broker.ask("gg/caller/in", "gg/caller/out", {"action": "shadow", "thing": thing})
    # the SDK raised ShadowError from AWS's error document (contract section 3.2)
    assert answer["shadow"] == "ShadowError"
    assert answer["error"] == (
        "Request for shadow state returned error code 403 with message "
        f'"Forbidden: no subscription routes {topic} from function:Caller to shadow"'
    )
    wait_until(
        lambda: (
            f"event=greengrass-shadow-refused function=Caller topic={topic}"
            in gw.paths.component_log("core").read_text()
        ),
        5,
        "the refusal in the core's log",
    )
    # nothing reached the shadow service: no request, no answer, no shadow
    assert not [t for t in broker.received if t.startswith(f"$aws/things/{thing}/")]
    got = broker.ask("gg/shadow/in", "gg/shadow/out", {"op": "get", "thing": thing})
    assert got["ok"] is False and "error code 404" in got["error"]


def test_lambda_invoke_request_response_returns_the_echo(broker: Broker) -> None:
    answer = broker.ask("gg/caller/in", "gg/caller/out", {"action": "sync"})
    assert answer["error"] == ""
    payload = json.loads(answer["payload"])
    assert payload["echo"]["from"] == "caller"
    # the echo ran as its own function and published under its own identity
    broker.wait_for("gg/echo/out", lambda d: d["event"].get("tag") == answer["tag"])


def test_lambda_invoke_event_returns_at_once_and_the_target_runs(broker: Broker) -> None:
    answer = broker.ask("gg/caller/in", "gg/caller/out", {"action": "async"})
    assert (answer["payload"], answer["error"]) == ("", "")
    ran = broker.wait_for("gg/echo/out", lambda d: d["event"].get("tag") == answer["tag"])
    assert ran["event"]["from"] == "caller-async"


def test_handler_exception_comes_back_as_handled(broker: Broker) -> None:
    answer = broker.ask("gg/caller/in", "gg/caller/out", {"action": "fail"})
    assert answer["error"] == "Handled"
    assert json.loads(answer["payload"]) == {"errorMessage": f"boom from failer {answer['tag']}"}


def test_idle_stopped_v1_workers_exit_cleanly_without_refused_requests(broker: Broker, gw: RunningGateway) -> None:
    log = gw.paths.component_log("core")

    def core_refused() -> int:
        return int(gw.status()["components"]["core"]["greengrass_refused_requests"])

    before = core_refused()
    stopped_before = log.read_text().count("function=Failer event=worker-idle-stopped")
    for _ in range(2):
        assert broker.ask("gg/caller/in", "gg/caller/out", {"action": "fail"})["error"] == "Handled"
    wait_until(
        lambda: log.read_text().count("function=Failer event=worker-idle-stopped") > stopped_before,
        15,
        "Failer's worker stopped when idle",
    )
    pid = int(log.read_text().split("function=Failer event=worker-idle-stopped pid=")[-1].split()[0])
    # the runtime saw 410 on its long poll and left by itself, before the pool would have killed it
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5, f"worker {pid} gone")
    time.sleep(1.5)  # what a runtime that missed the retirement would spend retrying /work
    assert core_refused() == before
    assert "event=get-work-failed" not in gw.paths.function_log("Failer").read_text()


@pytest.mark.parametrize("mode", ["huge", "grow"])
def test_v1_worker_past_its_memory_limit_is_replaced_and_the_next_message_succeeds(broker: Broker, mode: str) -> None:
    """A MemoryError (str() empty) or the kernel's OOM kill ends that worker alone; the message queued
    right behind it gets a fresh worker instead of failing as 'died' in the dying one (issue 4)."""
    breach, innocent = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    broker.publish("gg/hog/in", {"mode": mode, "tag": breach})
    broker.publish("gg/hog/in", {"mode": "hello", "tag": innocent})
    hog_pid = broker.wait_for("gg/hog/out", lambda d: d["tag"] == breach)["pid"]
    fresh_pid = broker.wait_for("gg/hog/out", lambda d: d["tag"] == innocent, timeout_s=20)["pid"]
    assert fresh_pid != hog_pid
    wait_until(lambda: not Path(f"/proc/{hog_pid}").exists(), 5, f"worker {hog_pid} gone")


def test_publish_with_another_functions_source_is_refused(broker: Broker) -> None:
    answer = broker.ask("gg/caller/in", "gg/caller/out", {"action": "spoof"})
    assert answer["spoof"] == "refused"
    assert "HTTP 403" in answer["error"]
    time.sleep(0.5)
    assert not any(b"spoofed" in raw for raw in broker.received["gg/echo/out"])


def test_publish_without_a_subscription_is_dropped_or_refused_by_policy(broker: Broker) -> None:
    answer = broker.ask("gg/caller/in", "gg/caller/out", {"action": "forbidden"})
    assert answer["all_or_error"] == "InvocationException"
    assert broker.received["gg/forbidden"] == []


def test_secrets_manager_says_it_is_not_supported(broker: Broker) -> None:
    answer = broker.ask("gg/caller/in", "gg/caller/out", {"action": "secret"})
    assert answer["secret"] == "SecretsManagerError"
    assert "does not serve the Greengrass v1 secrets manager" in answer["error"]


def test_boto3_in_a_function_gets_the_gateways_credentials_from_the_provider(
    broker: Broker, moto_url: str, gateway_credentials: None
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION)
    s3.create_bucket(Bucket="plant-a", CreateBucketConfiguration={"LocationConstraint": REGION})
    answer = broker.ask("gg/aws/in", "gg/aws/out", {"bucket": "plant-a", "key": "from-v1.txt"})
    assert answer["method"] == "container-role"
    assert answer["access_key"] == GATEWAY_KEY
    assert s3.get_object(Bucket="plant-a", Key="from-v1.txt")["Body"].read() == b"from a v1 function"


def test_api_refuses_requests_without_a_valid_token(gw: RunningGateway, imported: tuple[Path, Path, int]) -> None:
    _, _, port = imported
    url = f"http://127.0.0.1:{port}/2016-11-01/credentialprovider/"
    for headers, status in (({}, 401), ({"Authorization": "not-a-worker"}, 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)
        assert refused.value.code == status
    wait_until(
        lambda: "event=greengrass-request-refused status=403" in gw.paths.component_log("core").read_text(),
        5,
        "the refusal in the core's log",
    )


def test_handler_past_its_timeout_comes_back_unhandled_and_the_next_call_gets_a_fresh_worker(broker: Broker) -> None:
    slow = broker.ask("gg/caller/in", "gg/caller/out", {"action": "sleep", "seconds": 4})
    assert slow["error"] == "Unhandled"
    assert json.loads(slow["payload"]) == {"errorMessage": "Task timed out after 1.00 seconds"}
    stuck_pid = broker.wait_for("gg/sleeper/out", lambda d: d["tag"] == slow["tag"])["pid"]

    quick = broker.ask("gg/caller/in", "gg/caller/out", {"action": "sleep", "seconds": 0})
    assert quick["error"] == ""
    assert json.loads(quick["payload"])["slept"] == 0
    fresh_pid = broker.wait_for("gg/sleeper/out", lambda d: d["tag"] == quick["tag"])["pid"]
    assert fresh_pid != stuck_pid
    with pytest.raises(ProcessLookupError):
        os.kill(stuck_pid, 0)  # the timed-out worker was stopped, not left running its handler


def test_zip_with_its_own_old_core_modules_still_publishes_and_invokes(broker: Broker) -> None:
    answer = broker.ask("gg/old/in", "gg/old/out", {"n": 1})
    assert answer["subject"] == "gg/old/in"
    assert answer["error"] == ""
    assert answer["echo"] == {"echo": {"from": "old-bundle"}}
    # the echo it invoked ran and published under its own identity
    broker.wait_for("gg/echo/out", lambda d: d["event"] == {"from": "old-bundle"})


def _health(port: int, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://localhost:{port}/2016-11-01/health/workers", data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_health_api_lists_workers_as_v1_did_without_a_token(broker: Broker, imported: tuple[Path, Path, int]) -> None:
    _, _, port = imported
    heartbeat_pid = broker.wait_for("gg/heartbeat")["pid"]
    status, workers = _health(port)  # as the v1 docs' curl: no Authorization header
    assert status == 200
    assert all(set(w) == {"FuncArn", "WorkerId", "ProcessId", "WorkerState"} for w in workers)
    by_arn = {w["FuncArn"]: w for w in workers}
    heartbeat = by_arn[function_arn("Heartbeat")]
    assert heartbeat["ProcessId"] == heartbeat_pid
    assert heartbeat["WorkerState"] in ("Waiting", "Working")
    assert by_arn["arn:aws:lambda:::function:GGShadowService"]["WorkerState"] == "Waiting"

    unknown = function_arn("NotDeployed", "3")
    asked = [function_arn("Heartbeat"), "arn:aws:lambda:::function:GGShadowService:1", "some-malformed-arn", unknown]
    status, answer = _health(port, {"FuncArns": asked})
    assert status == 200
    assert [w["FuncArn"] for w in answer["Workers"]] == [
        function_arn("Heartbeat"),
        "arn:aws:lambda:::function:GGShadowService",
    ]
    assert answer["Workers"][0]["WorkerId"] == heartbeat["WorkerId"]
    assert answer["InvalidArns"] == ["some-malformed-arn", unknown]

    malformed_bodies: list[Any] = [b"not json", {"FuncArns": []}, {"Arns": [function_arn("Heartbeat")]}]
    for malformed in malformed_bodies:
        status, answer = _health(port, malformed)
        assert status == 400
        assert "Invalid request" in answer["message"]


def test_long_lived_handler_past_its_timeout_gets_its_worker_restarted(broker: Broker, gw: RunningGateway) -> None:
    """Runs last: it replaces the Heartbeat worker the tests above expect to stay the same."""
    stuck_pid = broker.wait_for("gg/heartbeat")["pid"]
    broker.publish("gg/heartbeat/in", {"sleep": 300})  # far past its Timeout of 2 s
    # supervisord stopped the stuck worker (through the core, over XML-RPC) instead of leaving its handler
    # running with no more work coming to it, and started a new one: its import-time loop runs again
    wait_until(lambda: not Path(f"/proc/{stuck_pid}").exists(), 30, f"stuck worker {stuck_pid} stopped")
    fresh_pid = broker.wait_for("gg/heartbeat", lambda d: d["pid"] != stuck_pid, timeout_s=30)["pid"]
    assert gw.status()["processes"]["fn-Heartbeat"]["pid"] == fresh_pid
    broker.publish("gg/heartbeat/in", {"n": "after-restart"})
    handled = broker.wait_for("gg/heartbeat/handled", lambda d: d["event"] == {"n": "after-restart"}, timeout_s=30)
    assert handled["pid"] == fresh_pid
    log = gw.paths.component_log("core").read_text()
    assert "function=Heartbeat event=timeout" in log
    assert "event=restarted program=fn-Heartbeat reason=invocation-timeout" in log
