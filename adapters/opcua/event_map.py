"""The adapter's `[[events]]` sources as bindings (the event notifier's NodeId for this session, or why
it cannot be used), the EventFilter that selects their fields and types, and the JSON body of one
event (times as epoch ms, LocalizedText as its text, NodeIds as strings, ByteStrings such as EventId
as base64).

It neither subscribes nor publishes: the session subscribes with these filters, the outbox publishes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from asyncua import Client, ua
from asyncua.common.events import Event, where_clause_from_evtype

from adapters.opcua.quality import status_reason
from adapters.opcua.variants import epoch_ms, to_json
from gateway.adapter_config import BASE_EVENT_TYPE as BASE_EVENT_TYPE_TEXT
from gateway.adapter_config import OpcuaAdapter, OpcuaEvents, event_field_key

BASE_EVENT_TYPE = ua.NodeId.from_string(BASE_EVENT_TYPE_TEXT)


class EventSourceError(Exception):
    """An `[[events]]` source this server cannot serve (its event type is unknown or not an event type)."""


@dataclass(eq=False)
class EventBinding:
    config: OpcuaEvents
    topic: str
    keys: list[str] = field(init=False)  # the JSON key of each selected field, in select-clause order
    node_id: ua.NodeId | None = None  # this session's, once resolved
    problem: str | None = None  # why these events are not being received in this session

    def __post_init__(self) -> None:
        self.keys = [event_field_key(f) for f in self.config.fields]

    @property
    def address(self) -> str:
        return self.config.address


def build_event_bindings(config: OpcuaAdapter) -> list[EventBinding]:
    return [EventBinding(events, config.events_topic(events)) for events in config.events]


async def _event_type(client: Client, text: str, timeout_s: float) -> ua.NodeId:
    try:
        type_id = ua.NodeId.from_string(text)
    except ua.UaStringParsingError:
        raise EventSourceError(f"event type {text} is not a valid NodeId") from None
    uri = getattr(type_id, "NamespaceUri", None)
    async with asyncio.timeout(timeout_s):
        if uri:
            namespaces = await client.get_namespace_array()
            if uri not in namespaces:
                raise EventSourceError(f"event type {text}: the server has no namespace {uri!r}")
            type_id = ua.NodeId(type_id.Identifier, ua.Int16(namespaces.index(uri)), type_id.NodeIdType)
        if type_id == BASE_EVENT_TYPE:
            return type_id
        try:
            node_class = await client.get_node(type_id).read_node_class()
        except ua.UaStatusCodeError as exc:
            raise EventSourceError(f"event type {text}: {status_reason(exc.code)}") from None
    if node_class != ua.NodeClass.ObjectType:
        raise EventSourceError(f"event type {text} is a {node_class.name}, not an event ObjectType")
    return type_id


async def event_filter(client: Client, binding: EventBinding, timeout_s: float) -> ua.EventFilter:
    """Select the configured fields (browse paths from the event type); only events of that type or a
    subtype pass, unless it is BaseEventType, which needs no where clause (some servers choke on it)."""
    type_id = await _event_type(client, binding.config.event_type, timeout_s)
    evfilter = ua.EventFilter()
    for path in binding.config.fields:
        operand = ua.SimpleAttributeOperand()
        operand.TypeDefinitionId = type_id
        operand.BrowsePath = [ua.QualifiedName.from_string(part) for part in path.split("/")]
        operand.AttributeId = ua.AttributeIds.Value
        evfilter.SelectClauses.append(operand)
    if type_id != BASE_EVENT_TYPE:
        async with asyncio.timeout(timeout_s):
            evfilter.WhereClause = await where_clause_from_evtype([client.get_node(type_id)])
    return evfilter


def event_value(value: Any) -> Any:
    """One event field as JSON: like a node value, except that times are epoch milliseconds."""
    if isinstance(value, ua.Variant):
        value = value.Value
    if isinstance(value, dt.datetime):
        return epoch_ms(value)
    if isinstance(value, list | tuple):
        return [event_value(item) for item in value]
    return to_json(value)


def event_body(binding: EventBinding, event: Event) -> dict[str, Any]:
    """The selected fields of one event notification by key (null where the event type lacks one)."""
    fields = event.event_fields or []
    return {key: event_value(fields[index]) if index < len(fields) else None for index, key in enumerate(binding.keys)}
