"""Routes write commands: a payload on `<tag topic>/set` becomes a write through the protocol adapter,
and its outcome (ok with the value written, or the error) is published on `<tag topic>/set/result`.

The protocol adapter does the writing (TagWriter); this module only parses, refuses and reports.
A stored (retained) command is never replayed: it would be applied again at every reconnect and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

from paho.mqtt.subscribeoptions import SubscribeOptions

from adapters.base.publisher import BrokerLink
from adapters.base.tag import Point, now_ms
from gateway import strict_json
from gateway.mqtt import MqttError, Received
from gateway.topics import SET_SUFFIX, adapter_set_filter, adapter_tag_topic, set_result_topic, set_topic

log = logging.getLogger(__name__)

MAX_PENDING_WRITES = 1000
RETAINED_REFUSAL = "retained commands are ignored: publish commands without retain"


class WriteRefused(Exception):
    """A write that cannot be attempted (read-only tag, value of the wrong type or out of range, queue full)."""


class TagWriter(Protocol):
    def submit_write(self, point: Point, value: Any) -> Awaitable[Any]:
        """Queue a write of `value` to `point`; raise WriteRefused at once if it cannot be attempted.
        The awaitable gives the value written or raises the reason it failed."""
        ...


class UnreadableCommand(ValueError):
    """A command payload that is not strict JSON, or more than the parser takes."""


def command_subscriptions(filters: Iterable[str]) -> list[tuple[str, SubscribeOptions]]:
    """QoS 1 subscriptions for commands with MQTT 5 Retain Handling 2 (MQTT 5.0 section 3.8.3.1: the
    broker sends no retained message at subscribe time). A command someone published with retain is
    applied once, when it arrives (without Retain As Published it comes unflagged), and not again at
    every reconnect and restart; one a broker hands over flagged anyway is refused (CommandRouter)."""
    options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    return [(topic_filter, options) for topic_filter in filters]


def load_command(payload: bytes) -> Any:
    """The payload as strict JSON (no NaN or Infinity: echoed in a result, they would make it invalid
    JSON); raises UnreadableCommand."""
    try:
        return strict_json.loads(payload)
    except strict_json.NotJson as exc:
        raise UnreadableCommand(str(exc)) from None
    except RecursionError:
        raise UnreadableCommand("payload is nested too deeply to be a command") from None


def parse_command(payload: bytes) -> tuple[Any, Any]:
    """(value, id) from `{"value": V, "id": X}` or a bare JSON value (`42`, `true`, `"on"`)."""
    try:
        body = load_command(payload)
    except UnreadableCommand as exc:
        raise WriteRefused(f'{exc}; send a value or {{"value": ...}}') from None
    if isinstance(body, dict):
        if "value" not in body:
            raise WriteRefused('a JSON object command needs a "value" key')
        return body["value"], body.get("id")
    return body, None


class CommandRouter:
    def __init__(self, adapter: str, points: Iterable[Point], writer: TagWriter, broker: BrokerLink | None = None):
        self.adapter = adapter
        self.writer = writer
        self.broker = broker
        self._by_set_topic = {set_topic(p.topic): p for p in points}
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.refused = 0

    def filters(self) -> list[str]:
        """Subscriptions that bring every tag's `/set`: one wildcard for default topics, then the others."""
        found = []
        for topic, point in self._by_set_topic.items():
            if point.topic == adapter_tag_topic(self.adapter, point.device, point.name):
                found.append(adapter_set_filter(self.adapter))
            else:
                found.append(topic)
        return list(dict.fromkeys(found))

    async def handle(self, received: Received) -> None:
        """LocalMqtt's on_message: start the write and return; the result is published when it completes."""
        if not received.topic.endswith(SET_SUFFIX):
            return
        tag_topic = received.topic.removesuffix(SET_SUFFIX)
        point = self._by_set_topic.get(received.topic)
        command_id = None
        try:
            if received.retain:
                if not received.payload:
                    return  # a retained command being cleared: nothing to write, nothing to answer
                with contextlib.suppress(WriteRefused):
                    command_id = parse_command(received.payload)[1]
                raise WriteRefused(RETAINED_REFUSAL)
            value, command_id = parse_command(received.payload)
            if point is None:
                raise WriteRefused(f"no tag publishes on {tag_topic} in adapter {self.adapter}")
            if not point.writable:
                raise WriteRefused(f"tag {point.key} is read-only (set writable = true in its adapter file)")
            if len(self._tasks) >= MAX_PENDING_WRITES:
                raise WriteRefused(f"{MAX_PENDING_WRITES} writes already pending; retry later")
            pending = self.writer.submit_write(point, value)
        except WriteRefused as exc:
            self.refused += 1
            log.warning("adapter=%s event=write-refused topic=%s reason=%s", self.adapter, tag_topic, exc)
            await self._result(tag_topic, {"ok": False, "error": str(exc)}, command_id)
            return
        except Exception as exc:  # a bug, but the sender still gets an answer
            self.refused += 1
            log.exception("adapter=%s event=write-failed topic=%s reason=unexpected error", self.adapter, tag_topic)
            error = f"write not attempted: unexpected {type(exc).__name__}: {exc}"
            await self._result(tag_topic, {"ok": False, "error": error}, command_id)
            return
        self.accepted += 1
        task = asyncio.create_task(self._complete(tag_topic, point, pending, command_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, tag_topic: str, point: Point, pending: Awaitable[Any], command_id: Any) -> None:
        try:
            written = await pending
        except Exception as exc:
            log.warning("adapter=%s event=write-failed tag=%s reason=%s", self.adapter, point.key, exc)
            await self._result(tag_topic, {"ok": False, "error": str(exc)}, command_id)
            return
        log.info("adapter=%s event=write-done tag=%s value=%r", self.adapter, point.key, written)
        await self._result(tag_topic, {"ok": True, "value": written}, command_id)

    async def _result(self, tag_topic: str, body: dict[str, Any], command_id: Any) -> None:
        if command_id is not None:
            body["id"] = command_id
        body["ts"] = now_ms()
        if self.broker is None:
            return
        try:
            await self.broker.publish(set_result_topic(tag_topic), json.dumps(body).encode(), qos=1)
        except (MqttError, TimeoutError) as exc:
            log.warning("adapter=%s event=set-result-not-sent topic=%s reason=%s", self.adapter, tag_topic, exc)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
