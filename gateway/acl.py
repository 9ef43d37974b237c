"""Compiles the subscription table into mosquitto's ACL file: a source may publish only the topics it
is a source for, a target may subscribe only to the topics it is a target of.

Also names each component's broker identity. It writes nothing itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.topics import (
    SHADOW_SYNC_DOWN_FILTER,
    SHADOW_SYNC_UP_FILTER,
    STATUS_FILTER,
    component_prefix,
    invoke_topic,
    reply_filter,
)

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

CORE = "core"
UPLINK = "uplink"
OPERATOR = "operator"
SHADOW_TOPICS = "$aws/things/+/shadow/#"


def adapter_identity(name: str) -> str:
    return f"adapter.{name}"


def function_identity(name: str) -> str:
    return f"function.{name}"


def adapter_component(name: str) -> str:
    return f"adapter-{name}"


def function_component(name: str) -> str:
    return f"fn-{name}"


def component_identity(component: str) -> str:
    """The broker username of a supervised component, from its program name."""
    if component.startswith("adapter-"):
        return adapter_identity(component.removeprefix("adapter-"))
    if component.startswith("fn-"):
        return function_identity(component.removeprefix("fn-"))
    return component


def needs_uplink(config: GatewayConfig) -> bool:
    """The uplink runs when there is a cloud, or data bound to or from it (spooled while local-only)."""
    return config.cloud is not None or any("cloud" in (s.source, s.target) for s in config.subscriptions)


def endpoint_identity(endpoint: str) -> str:
    """The broker username behind a subscription endpoint (`cloud`, `shadow`, `kind:name`)."""
    if endpoint == "cloud":
        return UPLINK
    if endpoint == "shadow":
        return CORE
    kind, _, name = endpoint.partition(":")
    if kind == "function":
        return function_identity(name)
    if kind == "adapter":
        return adapter_identity(name)
    return name  # device: the thing name, the CN of its certificate


@dataclass(frozen=True)
class Grant:
    access: str  # "read" | "write" | "readwrite"
    topic: str


def component_identities(config: GatewayConfig, adapter_names: Iterable[str]) -> dict[str, str]:
    """component (supervisord program / status name) -> broker identity, for every local component."""
    identities = {CORE: CORE}
    if needs_uplink(config):
        identities[UPLINK] = UPLINK
    identities.update({adapter_component(n): adapter_identity(n) for n in adapter_names})
    identities.update({function_component(f.name): function_identity(f.name) for f in config.functions})
    return identities


def compile_grants(
    config: GatewayConfig, adapter_names: Iterable[str], revoked_devices: frozenset[str] = frozenset()
) -> dict[str, list[Grant]]:
    """identity -> ordered, de-duplicated grants. A revoked device gets none, so mosquitto, which checks
    the ACL on every message, cuts it off even while a connection made before the revocation lasts."""
    grants: dict[str, dict[Grant, None]] = defaultdict(dict)

    def grant(identity: str, access: str, topic: str) -> None:
        grants[identity][Grant(access, topic)] = None

    grant(OPERATOR, "readwrite", "#")
    grant(OPERATOR, "readwrite", "$aws/#")
    grant(OPERATOR, "read", "$SYS/#")
    grant(CORE, "read", STATUS_FILTER)
    grant(CORE, "readwrite", SHADOW_TOPICS)
    for component, identity in component_identities(config, adapter_names).items():
        grant(identity, "write", component_prefix(component))
    if any(s.sync != "none" for s in config.shadows):
        # shadow sync: each side reads what the other writes under its own millgate/<component>/#;
        # only when sync is configured, which is also exactly when the core subscribes to it
        grant(UPLINK, "read", SHADOW_SYNC_UP_FILTER)
        grant(CORE, "read", SHADOW_SYNC_DOWN_FILTER)
    for name in adapter_names:
        # an adapter owns its data namespace: it publishes tag values there and reads `<topic>/set`
        # commands; who else may read or write there is still decided by the subscriptions
        grant(adapter_identity(name), "readwrite", f"{name}/#")
    for function in config.functions:
        # direct invocation (SDK `invoke`), which Greengrass allowed between local functions without a
        # subscription: anyone may ask, only the function's own pool reads its requests and its replies
        me = function_identity(function.name)
        grant(me, "write", invoke_topic("+"))
        grant(me, "read", invoke_topic(function.name))
        grant(me, "write", reply_filter("+"))
        grant(me, "read", reply_filter(function.name))
    for sub in config.subscriptions:
        if sub.target == "shadow" and sub.source.startswith("function:"):
            # the answers to the shadow requests a function may send are its to read (the SDK waits for
            # them), without a shadow -> function route, which would also invoke it with every answer
            for answer in shadow_answer_filters(sub.topic):
                grant(endpoint_identity(sub.source), "read", answer)
        for side, access in ((sub.source, "write"), (sub.target, "read")):
            if side.startswith("device:") and side.removeprefix("device:") in revoked_devices:
                continue
            grant(endpoint_identity(side), access, sub.topic)
    return {identity: list(items) for identity, items in grants.items()}


def shadow_answer_filters(request: str) -> list[str]:
    """`<request>/accepted` and `/rejected` when `request` names shadow get/update/delete requests
    (`$aws/things/<thing>/shadow[/name/<shadow>]/<operation>`, `+` allowed for thing, shadow and
    operation), else none."""
    levels = request.split("/")
    named = len(levels) == 7 and levels[4] == "name"
    if levels[:2] != ["$aws", "things"] or len(levels) not in (5, 7) or levels[3] != "shadow":
        return []
    if (len(levels) == 7 and not named) or levels[-1] not in ("get", "update", "delete", "+"):
        return []
    return [f"{request}/accepted", f"{request}/rejected"]


def acl_file_text(grants: dict[str, list[Grant]]) -> str:
    lines = ["# Generated by millgate from gateway.toml's subscriptions; edits are overwritten.", ""]
    for identity in sorted(grants):
        lines.append(f"user {identity}")
        lines.extend(f"topic {g.access} {g.topic}" for g in grants[identity])
        lines.append("")
    return "\n".join(lines)
