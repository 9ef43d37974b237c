"""The adapter's nodes and methods as bindings: each configured node with its Point (topic, deadband,
writable) and what one session learnt about it (resolved NodeId, VariantType and ValueRank, or why
it cannot be used), and the per-session lookups that fill them in (browse paths, data types).

It never subscribes, polls or writes; the session does, through these bindings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from asyncua import Client, ua
from asyncua.common.ua_utils import data_type_to_variant_type

from adapters.base.tag import Point, Quality
from adapters.opcua.quality import quality_of, status_reason
from gateway.adapter_config import OpcuaAdapter, OpcuaMethod, OpcuaNode

BATCH = 500  # nodes per Read / TranslateBrowsePaths request: below every server's MaxNodesPerRead we met
BUILTIN_TYPES = 25  # ns=0;i=1..25 are the built-in types, whose NodeId number is their VariantType


@dataclass(eq=False)
class NodeBinding:
    config: OpcuaNode
    point: Point
    handle: int  # the monitored item's client handle, unique in the adapter
    node_id: ua.NodeId | None = None  # this session's, once resolved
    variant_type: ua.VariantType | None = None  # read once, kept across sessions
    value_rank: int = -1
    problem: str | None = None  # why this node is not being read in this session

    @property
    def address(self) -> str:
        return self.config.address


@dataclass(eq=False)
class MethodBinding:
    config: OpcuaMethod
    topic: str
    inputs: list[tuple[ua.VariantType, int]] | None = None  # read once from InputArguments
    object_id: ua.NodeId = field(init=False)
    method_id: ua.NodeId = field(init=False)

    def __post_init__(self) -> None:
        self.object_id = ua.NodeId.from_string(self.config.object_id)
        self.method_id = ua.NodeId.from_string(self.config.method_id)


def build_bindings(config: OpcuaAdapter) -> tuple[list[NodeBinding], list[MethodBinding]]:
    nodes = []
    for handle, node in enumerate(config.nodes, start=1):
        point = Point(
            device=config.name,
            name=node.name,
            topic=config.node_topic(node),
            writable=node.writable,
            # subscribed nodes get the deadband from the server (DataChangeFilter); applying the absolute
            # one here too also covers servers that ignore it. The percent one means % of EURange there
            # and % of the last value here, so it is applied here only for polled nodes.
            deadband=node.deadband,
            deadband_percent=node.deadband_percent if node.mode == "poll" else 0.0,
            units=node.units,
        )
        nodes.append(NodeBinding(node, point, handle))
    methods = [MethodBinding(m, config.method_topic(m)) for m in config.methods]
    return nodes, methods


def _parse(text: str) -> ua.NodeId:
    return ua.NodeId.from_string(text)


async def _namespace_index(client: Client, uri: str, cache: dict[str, int]) -> int:
    if not cache:
        for index, known in enumerate(await client.get_namespace_array()):
            cache[known] = index
    if uri not in cache:
        raise LookupError(f"the server has no namespace {uri!r}")
    return cache[uri]


class Address(Protocol):
    @property
    def node_id(self) -> str | None: ...

    @property
    def browse_path(self) -> str | None: ...


class Locatable(Protocol):
    """A binding addressed by NodeId or browse path: a node or an event source."""

    @property
    def config(self) -> Address: ...

    node_id: ua.NodeId | None
    problem: str | None


async def resolve_node_ids(client: Client, bindings: Sequence[Locatable], timeout_s: float) -> None:
    """Fill in each binding's NodeId for this session (browse paths are translated in batches);
    a node that cannot be found gets a `problem` and stays out of the session."""
    namespaces: dict[str, int] = {}
    by_path: list[Locatable] = []
    for binding in bindings:
        binding.problem = None
        binding.node_id = None
        if binding.config.node_id is None:
            by_path.append(binding)
            continue
        try:
            node_id = _parse(binding.config.node_id)
        except ua.UaStringParsingError:
            binding.problem = f"{binding.config.node_id} is not a valid NodeId"
            continue
        uri = getattr(node_id, "NamespaceUri", None)
        if uri:
            try:
                async with asyncio.timeout(timeout_s):
                    index = await _namespace_index(client, uri, namespaces)
            except LookupError as exc:
                binding.problem = str(exc)
                continue
            node_id = ua.NodeId(node_id.Identifier, ua.Int16(index), node_id.NodeIdType)
        binding.node_id = node_id
    objects = client.nodes.objects
    for start in range(0, len(by_path), BATCH):
        chunk = by_path[start : start + BATCH]
        paths = [[ua.QualifiedName.from_string(p) for p in (b.config.browse_path or "").split("/")] for b in chunk]
        async with asyncio.timeout(timeout_s):
            found = await objects.get_children_by_path(paths, raise_on_partial_error=False)
        for binding, targets in zip(chunk, found, strict=True):
            target = targets[0] if targets else None
            if target is None:
                binding.problem = f"browse path {binding.config.browse_path} not found under Objects"
            else:
                binding.node_id = target.nodeid


async def _variant_type(client: Client, data_type: ua.NodeId, cache: dict[Any, ua.VariantType]) -> ua.VariantType:
    if (
        data_type.NamespaceIndex == 0
        and isinstance(data_type.Identifier, int)
        and data_type.Identifier <= BUILTIN_TYPES
    ):
        return ua.VariantType(data_type.Identifier)
    key = data_type.to_string()
    if key not in cache:
        cache[key] = await data_type_to_variant_type(client.get_node(data_type))
    return cache[key]


async def _read(
    client: Client, ids: list[ua.NodeId], attribute: ua.AttributeIds, timeout_s: float
) -> list[ua.DataValue]:
    results: list[ua.DataValue] = []
    for start in range(0, len(ids), BATCH):
        params = ua.ReadParameters()
        for node_id in ids[start : start + BATCH]:
            item = ua.ReadValueId()
            item.NodeId = node_id
            item.AttributeId = attribute
            params.NodesToRead.append(item)
        async with asyncio.timeout(timeout_s):
            results += await client.uaclient.read(params)
    return results


async def read_data_types(client: Client, bindings: list[NodeBinding], timeout_s: float) -> None:
    """Learn the VariantType and ValueRank of every writable node not yet known (once: they are kept)."""
    todo = [b for b in bindings if b.config.writable and b.variant_type is None and b.node_id is not None]
    if not todo:
        return
    ids = [b.node_id for b in todo if b.node_id is not None]
    types = await _read(client, ids, ua.AttributeIds.DataType, timeout_s)
    ranks = await _read(client, ids, ua.AttributeIds.ValueRank, timeout_s)
    cache: dict[Any, ua.VariantType] = {}
    for binding, data_type, rank in zip(todo, types, ranks, strict=True):
        code = data_type.StatusCode.value if data_type.StatusCode is not None else 0
        if quality_of(code) != Quality.GOOD or data_type.Value is None:
            binding.problem = status_reason(code)
            continue
        try:
            async with asyncio.timeout(timeout_s):
                binding.variant_type = await _variant_type(client, data_type.Value.Value, cache)
        except ua.UaError as exc:
            binding.problem = f"cannot tell the data type of {binding.address}: {exc}"
            continue
        good_rank = rank.StatusCode is None or rank.StatusCode.is_good()
        binding.value_rank = rank.Value.Value if good_rank and rank.Value is not None else -1


async def read_method_inputs(
    client: Client, method: MethodBinding, timeout_s: float
) -> list[tuple[ua.VariantType, int]]:
    """The VariantType and ValueRank of each input argument of a method (none if it has no InputArguments)."""
    if method.inputs is not None:
        return method.inputs
    node = client.get_node(method.method_id)
    async with asyncio.timeout(timeout_s):
        found = await node.get_children_by_path([[ua.QualifiedName("InputArguments", 0)]], raise_on_partial_error=False)
    inputs: list[tuple[ua.VariantType, int]] = []
    holder = found[0][0] if found[0] else None
    if holder is not None:
        async with asyncio.timeout(timeout_s):
            arguments = await holder.read_value()
        cache: dict[Any, ua.VariantType] = {}
        for argument in arguments or []:
            async with asyncio.timeout(timeout_s):
                inputs.append((await _variant_type(client, argument.DataType, cache), argument.ValueRank))
    method.inputs = inputs
    return inputs
