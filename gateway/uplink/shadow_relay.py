"""The uplink's half of shadow sync: carries the core's shadow requests up to the cloud, the cloud's
answers for the synced shadows back down to the core, and the cloud link's state as a retained message.

It decides nothing about shadows (the core's sync engine does) and never spools: a request that finds
the line down is dropped, because the engine reconciles every synced shadow when the link comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from gateway.backoff import Backoff
from gateway.config import ShadowSync
from gateway.mqtt import LocalMqtt, MqttError, PublishRefused, Received
from gateway.shadows.sync import LINK_TOPIC
from gateway.topics import (
    SHADOW_SYNC_UP_FILTER,
    SHADOW_SYNC_UP_PREFIX,
    parse_shadow_request,
    shadow_sync_cloud_topic,
    shadow_sync_down_topic,
    shadow_topic,
)
from gateway.uplink.cloud_link import CloudLink, CloudMessage, LinkDown

log = logging.getLogger(__name__)

# what the engine waits for; `/update/delta` is left out on purpose: `/update/documents` carries the
# same change with both versions, and AWS recommends exact shadow topics over wildcards
SHADOW_RESPONSES = (
    ("get", "accepted"),
    ("get", "rejected"),
    ("update", "accepted"),
    ("update", "rejected"),
    ("update", "documents"),
    ("delete", "accepted"),
    ("delete", "rejected"),
)
LOCAL_PUBLISH_TIMEOUT_S = 10.0
LINK_CHECK_S = 1.0  # how often a connected link's session number is re-read (a flap can hide in a wait)
LINK_STATES_QUEUED = 16


def synced_shadows(shadows: Sequence[ShadowSync]) -> list[ShadowSync]:
    return [s for s in shadows if s.sync != "none"]


def cloud_filters(shadows: Sequence[ShadowSync]) -> list[str]:
    """The exact cloud topics the uplink subscribes to for the synced shadows, in config order."""
    topics = (
        shadow_topic(s.thing, s.name, operation, outcome)
        for s in synced_shadows(shadows)
        for operation, outcome in SHADOW_RESPONSES
    )
    return list(dict.fromkeys(topics))


class ShadowRelay:
    def __init__(self, local: LocalMqtt, link: CloudLink, shadows: Sequence[ShadowSync]):
        self.local = local
        self.link = link
        self.filters = cloud_filters(shadows)
        self._cloud_topics = frozenset(self.filters)
        self._synced = {(s.thing, s.name) for s in synced_shadows(shadows)}
        self.relayed_up = 0
        self.dropped_up = 0
        self.refused_up = 0
        self.relayed_down = 0
        self._dropping = False
        self._refused_topics: set[str] = set()
        self._backoff = Backoff(initial_s=0.2, cap_s=10.0)
        self._waiting_local = False
        self._link_states: asyncio.Queue[tuple[bool, int]] = asyncio.Queue(maxsize=LINK_STATES_QUEUED)

    # ---- routing: which messages are the relay's --------------------------------------------------

    @staticmethod
    def local_subscription() -> tuple[str, int]:
        """The core's requests, at QoS 1: acknowledged once relayed (or dropped)."""
        return (SHADOW_SYNC_UP_FILTER, 1)

    @staticmethod
    def wants_local(topic: str) -> bool:
        return topic.startswith(SHADOW_SYNC_UP_PREFIX)

    def wants_cloud(self, topic: str) -> bool:
        return topic in self._cloud_topics

    def status_fields(self) -> dict[str, Any]:
        return {
            "shadow_relay": {
                "shadows": len(self._synced),
                "relayed_up": self.relayed_up,
                "dropped_up": self.dropped_up,
                "refused_up": self.refused_up,
                "relayed_down": self.relayed_down,
            }
        }

    # ---- up: the core's request, published in the cloud -------------------------------------------

    async def on_local_message(self, received: Received) -> None:
        """Publish a request in the cloud if the link is up, else drop it; acknowledge it either way."""
        try:
            cloud_topic = shadow_sync_cloud_topic(received.topic) or received.topic
            request = parse_shadow_request(cloud_topic)
            if request is None or request[:2] not in self._synced:
                self.refused_up += 1
                if cloud_topic not in self._refused_topics:
                    self._refused_topics.add(cloud_topic)
                    log.error(
                        "event=shadow-relay-refused topic=%s reason=not a request for a [[shadows]] entry with sync",
                        cloud_topic,
                    )
                return
            if not self.link.connected:
                self._drop(cloud_topic, self.link.reason)
                return
            try:
                self.link.publish(cloud_topic, received.payload)
            except LinkDown as exc:
                self._drop(cloud_topic, str(exc))
                return
            self.relayed_up += 1
            if self._dropping:
                self._dropping = False
                log.info("event=shadow-relay-resumed dropped_total=%d", self.dropped_up)
        finally:
            self.local.ack(received)

    def _drop(self, topic: str, reason: str | None) -> None:
        self.dropped_up += 1
        if not self._dropping:
            self._dropping = True
            log.info(
                "event=shadow-relay-dropping topic=%s reason=%s action=the core re-syncs on reconnect", topic, reason
            )

    # ---- down: the cloud's answer, handed to the core ---------------------------------------------

    async def on_cloud_message(self, message: CloudMessage) -> None:
        """Republish a synced shadow's answer for the core, then acknowledge it to the cloud."""
        topic = shadow_sync_down_topic(message.topic)
        while True:
            try:
                await self.local.publish(topic, message.payload, qos=1, timeout_s=LOCAL_PUBLISH_TIMEOUT_S)
                self.relayed_down += 1
                break
            except PublishRefused as exc:
                if message.topic not in self._refused_topics:
                    self._refused_topics.add(message.topic)
                    log.error("event=shadow-relay-refused-locally topic=%s reason=%s action=check the ACL", topic, exc)
                break  # the ACL refuses it every time; the engine re-syncs on its own timeout
            except (MqttError, TimeoutError) as exc:
                if not self._waiting_local:
                    self._waiting_local = True
                    log.warning("event=shadow-relay-waiting-for-local-broker reason=%s", exc)
                await asyncio.sleep(self._backoff.next_delay())
        if self._waiting_local:
            self._waiting_local = False
            log.info("event=shadow-relay-local-broker-back")
        self._backoff.reset()
        self.link.ack(message)

    # ---- the link's state, retained for the core ---------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._publish_link_states())
            tasks.create_task(self._watch_link())

    async def _watch_link(self) -> None:
        """Announce `connected` only once the cloud link has its subscriptions (CloudLink sets
        `connected_event` after the SUBACK) and `disconnected` when that connection ends."""
        self._announce(False, self.link.session)
        while True:
            await self.link.connected_event.wait()
            session = self.link.session
            self._announce(True, session)
            while self.link.session == session and self.link.connected_event.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINK_CHECK_S):
                        await self.link.lost_event.wait()
            self._announce(False, session)

    def _announce(self, connected: bool, session: int) -> None:
        if self._link_states.full():
            self._link_states.get_nowait()  # only the latest states matter to the core
        self._link_states.put_nowait((connected, session))

    async def _publish_link_states(self) -> None:
        backoff = Backoff(initial_s=0.1, cap_s=5.0)
        while True:
            connected, session = await self._link_states.get()
            payload = json.dumps({"connected": connected, "session": session}).encode()
            while True:
                try:
                    await self.local.publish(LINK_TOPIC, payload, qos=1, retain=True, timeout_s=LOCAL_PUBLISH_TIMEOUT_S)
                    break
                except (MqttError, TimeoutError):
                    await asyncio.sleep(backoff.next_delay())
            backoff.reset()
            log.info("event=shadow-sync-link connected=%s session=%d", str(connected).lower(), session)

    async def announce_stopped(self) -> None:
        """Best effort at shutdown: tell the core the link is gone before the local connection closes
        (a crash leaves the last state retained; the next start announces `disconnected` first)."""
        payload = json.dumps({"connected": False, "session": self.link.session}).encode()
        try:
            await self.local.publish(LINK_TOPIC, payload, qos=1, retain=True, timeout_s=1.0)
        except (MqttError, TimeoutError) as exc:
            log.warning("event=shadow-sync-link-not-announced reason=%s", exc)
