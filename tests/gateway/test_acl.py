"""gateway/acl.py: the subscription table compiled into mosquitto's ACL file.

From ../shared/DESIGN.md, "Messaging": subscriptions are the whitelist; a source may publish only the
topics it is a source for and a target may subscribe only to the topics it is a target of; every client
has its own identity (cloud is the uplink, shadow the core, a device its thing name).
"""

from __future__ import annotations

import pytest

from gateway.acl import Grant, acl_file_text, compile_grants, endpoint_identity
from gateway.config import GatewayConfig


def config(*subscriptions: tuple[str, str, str]) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway": {"thing_name": "plant-a-gw1"},
            "functions": [
                {"name": "x", "code": "functions/x", "handler": "detector.function_handler", "run_as": "1001:1001"}
            ],
            "subscriptions": [{"source": s, "target": t, "topic": topic} for s, t, topic in subscriptions],
        }
    )


def parse_acl(text: str) -> dict[str, list[str]]:
    """user -> its `topic ...` lines, in file order."""
    users: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("user "):
            current = users.setdefault(line.removeprefix("user "), [])
        elif line.startswith("topic "):
            assert current is not None, f"topic line before any user: {line!r}"
            current.append(line)
        else:
            assert line == "" or line.startswith("#"), line
    return users


@pytest.mark.parametrize(
    ("endpoint", "identity"),
    [
        ("cloud", "uplink"),
        ("shadow", "core"),
        ("function:x", "function.x"),
        ("adapter:y", "adapter.y"),
        ("device:z", "z"),
        ("device:press-01", "press-01"),
    ],
)
def test_endpoint_identity(endpoint: str, identity: str) -> None:
    assert endpoint_identity(endpoint) == identity


@pytest.mark.parametrize(
    ("source", "target", "writer", "reader"),
    [
        ("adapter:y", "function:x", "adapter.y", "function.x"),
        ("function:x", "cloud", "function.x", "uplink"),
        ("cloud", "device:z", "uplink", "z"),
        ("device:z", "shadow", "z", "core"),
        ("shadow", "function:x", "core", "function.x"),
    ],
)
def test_subscription_lets_source_write_and_target_read(source: str, target: str, writer: str, reader: str) -> None:
    grants = compile_grants(config((source, target, "line1/+/temperature")), ["y"])
    assert Grant("write", "line1/+/temperature") in grants[writer]
    assert Grant("read", "line1/+/temperature") in grants[reader]
    assert Grant("read", "line1/+/temperature") not in grants[writer]
    assert Grant("write", "line1/+/temperature") not in grants[reader]


def test_only_the_endpoints_of_a_subscription_get_its_topic() -> None:
    grants = compile_grants(config(("device:z", "function:x", "cmd/z")), ["y"])
    holders = {identity for identity, items in grants.items() for g in items if g.topic == "cmd/z"}
    assert holders == {"z", "function.x"}


def test_operator_reads_and_writes_everything() -> None:
    grants = compile_grants(config(), [])
    assert Grant("readwrite", "#") in grants["operator"]
    assert parse_acl(acl_file_text(grants))["operator"][0] == "topic readwrite #"


def test_grants_are_deduplicated_and_keep_order() -> None:
    grants = compile_grants(
        config(("device:z", "function:x", "a/b"), ("device:z", "cloud", "a/b"), ("device:z", "function:x", "c")), []
    )
    assert grants["z"] == [Grant("write", "a/b"), Grant("write", "c")]


def test_acl_file_lists_each_identity_once_sorted_with_its_grants() -> None:
    grants = compile_grants(
        config(("adapter:y", "function:x", "y/press-01/temperature"), ("function:x", "cloud", "alerts")), ["y"]
    )
    text = acl_file_text(grants)
    users = parse_acl(text)
    assert list(users) == sorted(users) == sorted(grants)
    assert text.count("user function.x\n") == 1
    for identity, items in grants.items():
        assert users[identity] == [f"topic {g.access} {g.topic}" for g in items]
    assert "topic write y/press-01/temperature" in users["adapter.y"]
    assert "topic read y/press-01/temperature" in users["function.x"]
    assert "topic write alerts" in users["function.x"]
    assert "topic read alerts" in users["uplink"]


def test_a_function_may_read_the_answers_to_the_shadow_requests_it_may_send() -> None:
    # the SDK waits on <request>/accepted|rejected; no shadow -> function route (which would also invoke
    # the function with every answer) is needed for that, and nothing beyond the answers is granted
    grants = compile_grants(
        config(
            ("function:x", "shadow", "$aws/things/+/shadow/+"),
            ("function:x", "shadow", "$aws/things/press/shadow/name/+/update"),
            ("function:x", "shadow", "$aws/things/press/shadow/update/delta"),
        ),
        [],
    )
    reads = [g.topic for g in grants[endpoint_identity("function:x")] if g.access == "read"]
    assert "$aws/things/+/shadow/+/accepted" in reads and "$aws/things/+/shadow/+/rejected" in reads
    assert "$aws/things/press/shadow/name/+/update/accepted" in reads
    assert not any(t.startswith("$aws/things/press/shadow/update/delta/") for t in reads)
    assert Grant("write", "$aws/things/+/shadow/+") in grants[endpoint_identity("function:x")]
