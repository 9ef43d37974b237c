"""The publish loop: readings the change filter admits go to the local broker, a window of QoS 1
publishes in flight at a time, the newest reading per topic kept while the broker is away.

The buffer holds at most one payload per tag, so it can neither grow without bound nor fill up: a
reading replaced before it was sent is counted as superseded. A value too large for the broker is
published as a bad reading that says so. It does no protocol I/O.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from adapters.base.change_filter import ChangeFilter
from adapters.base.tag import Point, TagValue
from gateway.mqtt import NotConnected, PacketTooLarge, PublishRefused

log = logging.getLogger(__name__)

RECONNECT_POLL_S = 0.2


class BrokerLink(Protocol):
    """The part of gateway.mqtt.LocalMqtt the adapter base uses."""

    @property
    def connected(self) -> bool: ...

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout_s: float = 10.0
    ) -> None: ...


class Publisher:
    def __init__(self, adapter: str, qos: int = 1, retain: bool = False, window: int = 64):
        self.adapter = adapter
        self.qos = qos
        self.retain = retain
        self.window = window
        self.filter = ChangeFilter()
        self.published = 0
        self.superseded = 0
        self.refused = 0
        self.too_large = 0
        self._pending: dict[str, bytes] = {}
        self._units: dict[str, str | None] = {}  # per topic, for the bad reading that replaces a value too large
        self._wake = asyncio.Event()
        self._refused_topics: set[str] = set()
        self._too_large_topics: set[str] = set()

    def offer(self, point: Point, reading: TagValue) -> None:
        """Queue `reading` for publication if the change filter admits it; never blocks."""
        if not self.filter.admit(point, reading):
            return
        if point.topic in self._pending:
            self.superseded += 1
        self._pending[point.topic] = reading.payload(point.units)
        self._units[point.topic] = point.units
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "superseded": self.superseded,
            "refused": self.refused,
            "too_large": self.too_large,
            "backlog": self.backlog,
        }

    async def run(self, broker: BrokerLink) -> None:
        """Publish until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if not broker.connected:
                    await asyncio.sleep(RECONNECT_POLL_S)
                    continue
                batch = []
                for _ in range(min(self.window, len(self._pending))):
                    topic = next(iter(self._pending))
                    batch.append((topic, self._pending.pop(topic)))
                await asyncio.gather(*(self._send(broker, topic, payload) for topic, payload in batch))

    async def _send(self, broker: BrokerLink, topic: str, payload: bytes) -> None:
        try:
            await broker.publish(topic, payload, qos=self.qos, retain=self.retain)
            self.published += 1
        except PacketTooLarge as exc:
            # sent anyway, it would cost the connection, and be sent again, and again, ahead of every other tag
            self.too_large += 1
            reason = f"value of {exc.payload_bytes} bytes is over the broker's limit of {exc.limit_bytes} bytes"
            if topic not in self._too_large_topics:
                self._too_large_topics.add(topic)
                log.error("adapter=%s event=value-too-large topic=%s reason=%s", self.adapter, topic, reason)
            await self._send_bad(broker, topic, TagValue.bad(reason).payload(self._units.get(topic)))
        except PublishRefused as exc:
            self.refused += 1
            log_refusal_once(self.adapter, topic, exc, self._refused_topics)
        except (NotConnected, TimeoutError):
            # keep it unless a newer reading already replaced it; the loop waits for the broker
            self._pending.setdefault(topic, payload)

    async def _send_bad(self, broker: BrokerLink, topic: str, payload: bytes) -> None:
        try:
            await broker.publish(topic, payload, qos=self.qos, retain=self.retain)
            self.published += 1
        except PublishRefused as exc:  # PacketTooLarge too: a limit below even a bad reading; not retried
            self.refused += 1
            log_refusal_once(self.adapter, topic, exc, self._refused_topics)
        except (NotConnected, TimeoutError):
            self._pending.setdefault(topic, payload)


def log_refusal_once(adapter: str, topic: str, refusal: PublishRefused, seen: set[str]) -> None:
    """A topic the broker refuses stays refused until the config changes: say so once per topic."""
    if topic in seen:
        return
    seen.add(topic)
    log.error(
        "adapter=%s event=publish-refused topic=%s reason=%s hint=%s",
        adapter,
        topic,
        refusal,
        "the broker ACL allows an adapter its own '<adapter>/#' namespace and subscription sources",
    )
