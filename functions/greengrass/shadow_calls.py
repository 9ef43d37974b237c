"""GGShadowService for Greengrass v1 functions: a shadow call a function's subscriptions allow goes to
millgate's shadow service over the broker (under the core's identity) and comes back as AWS's accepted
or error document; a call no subscription `function:<caller>` -> `shadow` allows is refused with an
AWS error document (403) and never published.

It owns no connection: the core's publish and the answers it receives are handed in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.config import Subscription
from gateway.mqtt import Received
from gateway.shadows import document as shadow_doc
from gateway.shadows.document import ShadowError
from gateway.topics import SHADOW_OPERATIONS, parse_shadow_request, shadow_topic, topic_matches

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]

SHADOW_TIMEOUT_S = 10.0
SHADOW_TARGET = "shadow"  # the subscription endpoint of the shadow service (v1's GGShadowService)
MAX_REFUSALS_REMEMBERED = 1000


@dataclass(frozen=True)
class ShadowAnswer:
    payload: bytes
    function_error: str = ""  # "" | "Unhandled": the call itself failed (no document to give)


def custom_of(client_context: str) -> dict[str, Any]:
    """The `custom` map of a base64 JSON client context; {} for an empty or malformed one."""
    if not client_context:
        return {}
    try:
        decoded = json.loads(base64.b64decode(client_context))
    except (ValueError, binascii.Error):
        return {}
    custom = decoded.get("custom") if isinstance(decoded, dict) else None
    return custom if isinstance(custom, dict) else {}


def _unhandled(message: str) -> ShadowAnswer:
    return ShadowAnswer(json.dumps({"errorMessage": message}).encode(), "Unhandled")


class ShadowCalls:
    def __init__(self, subscriptions: Iterable[Subscription]):
        # function name -> the topic filters its subscriptions to the shadow service allow
        self.routes: dict[str, list[str]] = {}
        for sub in subscriptions:
            if sub.target == SHADOW_TARGET and sub.source.startswith("function:"):
                self.routes.setdefault(sub.source.removeprefix("function:"), []).append(sub.topic)
        self.refused = 0
        self._publish: Publish | None = None
        self._waiters: dict[str, asyncio.Future[Received]] = {}
        self._refusals_logged: set[tuple[str, str]] = set()

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """What the core's connection must subscribe to (and route to `on_answer`)."""
        outcomes = ("accepted", "rejected")
        return [(shadow_topic("+", None, op, outcome), 1) for op in SHADOW_OPERATIONS for outcome in outcomes]

    @property
    def ready(self) -> bool:
        return self._publish is not None

    def use_publisher(self, publish: Publish) -> None:
        """The core's own publish (its identity may write shadow requests)."""
        self._publish = publish

    async def on_answer(self, received: Received) -> None:
        try:
            token = json.loads(received.payload).get("clientToken")
        except (ValueError, AttributeError):
            return
        waiter = self._waiters.get(token) if isinstance(token, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(received)

    def allowed(self, function: str, topic: str) -> bool:
        """Whether a subscription `function:<function>` -> `shadow` routes `topic`, as v1 required."""
        return any(topic_matches(topic_filter, topic) for topic_filter in self.routes.get(function, ()))

    def _refuse(self, function: str, topic: str) -> ShadowAnswer:
        self.refused += 1
        key = (function, topic)
        if key not in self._refusals_logged and len(self._refusals_logged) < MAX_REFUSALS_REMEMBERED:
            self._refusals_logged.add(key)
            log.warning(
                "event=greengrass-shadow-refused function=%s topic=%s reason=no-subscription "
                "hint=add-a-subscription-from-function:%s-to-shadow",
                function,
                topic,
                function,
            )
        message = f"Forbidden: no subscription routes {topic} from function:{function} to {SHADOW_TARGET}"
        error = ShadowError(403, message)
        return ShadowAnswer(json.dumps(shadow_doc.error_document(error, int(time.time()))).encode())

    async def call(self, function: str, client_context: str, body: bytes) -> ShadowAnswer:
        """A v1 shadow call of `function`: AWS's accepted document, or AWS's error document (which the SDK
        turns into ShadowError: contract section 3.2)."""
        subject = str(custom_of(client_context).get("subject", ""))
        request = parse_shadow_request(subject)
        if request is None:
            return _unhandled(f"GGShadowService: {subject!r} is not a shadow request topic")
        if not self.allowed(function, subject):
            return self._refuse(function, subject)
        thing, name, operation = request
        document: dict[str, Any] = {}
        if body.strip() or operation == "update":
            try:
                parsed = shadow_doc.read_json(body)
                if not isinstance(parsed, dict):
                    if operation == "update":
                        raise shadow_doc.bad_request("Invalid JSON")
                    parsed = {}
                shadow_doc.client_token(parsed)
            except ShadowError as exc:
                return ShadowAnswer(json.dumps(shadow_doc.error_document(exc, int(time.time()))).encode())
            document = parsed
        callers_token = document.get("clientToken")
        token = uuid.uuid4().hex  # ours, so concurrent callers with the same token never cross
        document["clientToken"] = token
        if self._publish is None:
            return _unhandled("the shadow service is not reachable yet")
        waiter: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._waiters[token] = waiter
        try:
            await self._publish(shadow_topic(thing, name, operation), json.dumps(document).encode())
            async with asyncio.timeout(SHADOW_TIMEOUT_S):
                received = await waiter
        except TimeoutError:
            return _unhandled(f"no answer from the shadow service on {subject} in {SHADOW_TIMEOUT_S:.0f} s")
        finally:
            self._waiters.pop(token, None)
        answer = json.loads(received.payload)
        if callers_token is None:
            answer.pop("clientToken", None)
        else:
            answer["clientToken"] = callers_token
        return ShadowAnswer(json.dumps(answer, separators=(",", ":")).encode())
