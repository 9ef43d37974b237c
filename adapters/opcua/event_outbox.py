"""The publish queue of OPC-UA events: unlike node values, where only the newest matters, every event
is published, in the order it arrived, at most `capacity` of them waiting while the broker is away.

When full it drops the oldest event, counts it and says so once per overflow; an event too large for
the broker is dropped and counted, never retried ahead of the rest. It does no OPC-UA I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from adapters.base.publisher import BrokerLink, log_refusal_once
from gateway.mqtt import NotConnected, PacketTooLarge, PublishRefused

log = logging.getLogger(__name__)

CAPACITY = 1000
RETRY_S = 0.2


class EventOutbox:
    def __init__(self, adapter: str, qos: int = 1, capacity: int = CAPACITY):
        self.adapter = adapter
        self.qos = qos
        self.published = 0
        self.dropped = 0
        self.refused = 0
        self.too_large = 0
        self._queue: deque[tuple[str, bytes]] = deque()
        self._capacity = capacity
        self._overflowing = False
        self._wake = asyncio.Event()
        self._refused_topics: set[str] = set()
        self._too_large_topics: set[str] = set()

    def offer(self, topic: str, payload: bytes) -> None:
        """Queue one event; never blocks (the oldest waiting event is dropped when full)."""
        if len(self._queue) >= self._capacity:
            self._queue.popleft()
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "adapter=%s event=events-dropped capacity=%d reason=the broker is not taking events; "
                    "the oldest are dropped until it does",
                    self.adapter,
                    self._capacity,
                )
        self._queue.append((topic, payload))
        self._wake.set()

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "dropped": self.dropped,
            "refused": self.refused,
            "too_large": self.too_large,
            "backlog": len(self._queue),
        }

    async def run(self, broker: BrokerLink) -> None:
        """Publish in order until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if not broker.connected:
                    await asyncio.sleep(RETRY_S)
                    continue
                topic, payload = self._queue[0]
                try:
                    await broker.publish(topic, payload, qos=self.qos, retain=False)
                    self.published += 1
                except PacketTooLarge as exc:
                    self.too_large += 1
                    if topic not in self._too_large_topics:
                        self._too_large_topics.add(topic)
                        log.error(
                            "adapter=%s event=event-dropped-too-large topic=%s reason=%s", self.adapter, topic, exc
                        )
                except PublishRefused as exc:
                    self.refused += 1
                    log_refusal_once(self.adapter, topic, exc, self._refused_topics)
                except (NotConnected, TimeoutError):
                    await asyncio.sleep(RETRY_S)
                    continue
                if self._queue and self._queue[0][0] == topic and self._queue[0][1] is payload:
                    self._queue.popleft()
                if self._overflowing and not self._queue:
                    self._overflowing = False
                    log.info("adapter=%s event=events-flowing dropped=%d", self.adapter, self.dropped)
