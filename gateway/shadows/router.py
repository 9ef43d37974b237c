"""Hands each message a component receives to every handler whose topic filter matches it, so one
LocalMqtt connection can serve several services in the same process; and, since it sees every message,
tells whoever asked when messages start coming from a new broker connection (a reconnect).

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
        self._on_reconnect: list[Callable[[], None]] = []
        self._connection = 0  # `Received.session` of the latest message: LocalMqtt's connection number

    def add(self, filters: Iterable[str], handler: Handler) -> None:
        self._routes.extend((f, handler) for f in filters)

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """Call `hook` when the first message of a later connection arrives (not of the first one).
        Every connection brings one soon: the component's own retained status, to its status filter."""
        self._on_reconnect.append(hook)

    async def dispatch(self, received: Received) -> None:
        if received.session > self._connection:
            reconnected = self._connection != 0
            self._connection = received.session
            if reconnected:
                for hook in self._on_reconnect:
                    try:
                        hook()
                    except Exception:
                        log.exception("event=reconnect-hook-failed")
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
