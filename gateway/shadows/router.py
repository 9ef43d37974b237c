"""Hands each message a component receives to every handler whose topic filter matches it, so one
LocalMqtt connection can serve several services in the same process.

It only routes; it neither subscribes nor publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from gateway.mqtt import Received
from gateway.topics import topic_matches

log = logging.getLogger(__name__)

Handler = Callable[[Received], Awaitable[None]]


class TopicRouter:
    def __init__(self) -> None:
        self._routes: list[tuple[str, Handler]] = []

    def add(self, filters: Iterable[str], handler: Handler) -> None:
        self._routes.extend((f, handler) for f in filters)

    async def dispatch(self, received: Received) -> None:
        called: list[Handler] = []
        for topic_filter, handler in self._routes:
            if handler in called or not topic_matches(topic_filter, received.topic):
                continue
            called.append(handler)
            try:
                await handler(received)
            except Exception:
                log.exception("event=handler-failed topic=%s", received.topic)
        if not called:
            log.debug("event=unrouted topic=%s", received.topic)
