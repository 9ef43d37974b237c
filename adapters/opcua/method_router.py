"""Routes method calls: a JSON list of input arguments (or `{"args": [...], "id": X}`) on a method's
topic becomes a call through the session, and its outputs or error go to `<topic>/result`.

The session does the calling; this module only parses, refuses, bounds and reports. A retained call
is never made: it would be made again on every reconnect and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.base.commands import UnreadableCommand, load_command
from adapters.base.publisher import BrokerLink
from adapters.base.tag import now_ms
from adapters.opcua.node_map import MethodBinding
from adapters.opcua.session import CallFailed, CallRefused
from gateway.mqtt import MqttError, Received

log = logging.getLogger(__name__)

MAX_PENDING_CALLS = 100
RESULT_SUFFIX = "/result"
RETAINED_REFUSAL = "retained method calls are ignored: publish calls without retain"

Caller = Callable[[MethodBinding, list[Any]], Awaitable[list[Any]]]


def parse_call(payload: bytes) -> tuple[list[Any], Any]:
    """(arguments, id) from `[...]`, `{"args": [...], "id": X}` or an empty payload (no arguments)."""
    if not payload.strip():
        return [], None
    try:
        body = load_command(payload)
    except UnreadableCommand as exc:
        raise CallRefused(f'{exc}; send a list of arguments or {{"args": [...]}}') from None
    if isinstance(body, list):
        return body, None
    if isinstance(body, dict) and isinstance(body.get("args", []), list):
        return list(body.get("args", [])), body.get("id")
    raise CallRefused('send a JSON list of input arguments or {"args": [...], "id": ...}')


class MethodRouter:
    def __init__(self, adapter: str, methods: list[MethodBinding], caller: Caller, broker: BrokerLink | None = None):
        self.adapter = adapter
        self.caller = caller
        self.broker = broker
        self._by_topic = {m.topic: m for m in methods}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls_ok = 0
        self.calls_failed = 0

    def filters(self) -> list[str]:
        return list(self._by_topic)

    async def handle(self, received: Received) -> None:
        method = self._by_topic.get(received.topic)
        if method is None:
            return
        call_id = None
        try:
            if received.retain:
                if not received.payload:
                    return  # a retained call being cleared: nothing to call, nothing to answer
                with contextlib.suppress(CallRefused):
                    call_id = parse_call(received.payload)[1]
                raise CallRefused(RETAINED_REFUSAL)
            args, call_id = parse_call(received.payload)
            if len(self._tasks) >= MAX_PENDING_CALLS:
                raise CallRefused(f"{MAX_PENDING_CALLS} calls already pending; retry later")
        except CallRefused as exc:
            await self._refused(method, exc, call_id)
            return
        task = asyncio.create_task(self._complete(method, args, call_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refused(self, method: MethodBinding, exc: Exception, call_id: Any) -> None:
        self.calls_failed += 1
        log.warning("adapter=%s method=%s event=call-failed reason=%s", self.adapter, method.config.name, exc)
        await self._result(method, {"ok": False, "error": str(exc)}, call_id)

    async def _complete(self, method: MethodBinding, args: list[Any], call_id: Any) -> None:
        try:
            outputs = await self.caller(method, args)
        except (CallRefused, CallFailed) as exc:
            await self._refused(method, exc, call_id)
            return
        except Exception as exc:  # a bug, but the caller still gets an answer
            log.exception(
                "adapter=%s method=%s event=call-failed reason=unexpected error", self.adapter, method.config.name
            )
            await self._refused(method, CallFailed(f"unexpected {type(exc).__name__}: {exc}"), call_id)
            return
        self.calls_ok += 1
        log.info("adapter=%s method=%s event=call-done outputs=%d", self.adapter, method.config.name, len(outputs))
        await self._result(method, {"ok": True, "outputs": outputs}, call_id)

    async def _result(self, method: MethodBinding, body: dict[str, Any], call_id: Any) -> None:
        if call_id is not None:
            body["id"] = call_id
        body["ts"] = now_ms()
        if self.broker is None:
            return
        try:
            await self.broker.publish(method.topic + RESULT_SUFFIX, json.dumps(body).encode(), qos=1)
        except (MqttError, TimeoutError) as exc:
            log.warning("adapter=%s event=call-result-not-sent topic=%s reason=%s", self.adapter, method.topic, exc)

    def stats(self) -> dict[str, int]:
        return {"ok": self.calls_ok, "failed": self.calls_failed, "pending": len(self._tasks)}

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
