"""The core's shadow service: takes shadow requests from the local broker, answers them through the
handler on the one thread that owns shadows.db, and publishes the answers in order from a bounded
queue; with cloud sync configured it also feeds the sync engine.

It owns no MQTT connection: the core hands it received messages and a publish callable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from gateway.config import ShadowSync
from gateway.mqtt import MqttError, Received
from gateway.shadows.handler import TOMBSTONE_S, Outgoing, ShadowHandler
from gateway.shadows.sync import ShadowSyncEngine
from gateway.storage_thread import StorageThread
from gateway.topics import SHADOW_REQUEST_FILTERS, parse_shadow_request
from storage.shadows import ShadowStore

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]

OUTBOX_SIZE = 1000
PURGE_EVERY_S = 3600.0


class ShadowService:
    def __init__(self, storage: StorageThread, store: ShadowStore, synced: Sequence[ShadowSync] = ()):
        self.storage = storage
        self.store = store
        self.handler = ShadowHandler(store)
        self.sync = ShadowSyncEngine(self.handler, storage, self._enqueue, synced) if synced else None
        self.answered = 0
        self.rejected = 0
        self.publish_failures = 0
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=OUTBOX_SIZE)
        self._publish_failing = False

    @classmethod
    def open(cls, db_path: Path, synced: Sequence[ShadowSync] = ()) -> ShadowService:
        """Open (or create) shadows.db on the service's own storage thread; blocking, for start-up.
        Raises ShadowStoreError (naming the file) when it cannot be used."""
        storage = StorageThread()
        try:
            store = storage.run(ShadowStore, db_path)
        except BaseException:
            storage.close()
            raise
        return cls(storage, store, [s for s in synced if s.sync != "none"])

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """The topic filters the core must subscribe to (QoS 1) and route to `on_message`."""
        filters = list(SHADOW_REQUEST_FILTERS)
        if self.sync is not None:
            filters += self.sync.filters
        return [(f, 1) for f in filters]

    def status_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"shadow_answered": self.answered, "shadow_rejected": self.rejected}
        if self.sync is not None:
            fields["shadow_sync"] = self.sync.state
        return fields

    def on_broker_reconnected(self) -> None:
        """The core's connection to the broker is back; sync must reconcile what it may have missed."""
        if self.sync is not None:
            self.sync.on_broker_reconnected()

    async def on_message(self, received: Received) -> None:
        request = parse_shadow_request(received.topic)
        if request is None:
            if self.sync is not None:
                await self.sync.on_message(received)
            return
        thing, name, operation = request
        outcome = await self.storage.call(self.handler.handle, thing, name, operation, received.payload)
        self.answered += 1
        if outcome.error is not None:
            self.rejected += 1
            log.debug(
                "event=shadow-rejected thing=%s name=%s operation=%s code=%d message=%r",
                thing,
                name,
                operation,
                outcome.error.code,
                outcome.error.message,
            )
        for message in outcome.messages:
            await self._enqueue(message)
        if outcome.change is not None and self.sync is not None:
            await self.sync.on_local_change(outcome.change)

    async def run(self, stop: asyncio.Event, publish: Publish) -> None:
        """Publish answers until `stop`; then close the store."""
        try:
            async with asyncio.TaskGroup() as tasks:
                workers = [tasks.create_task(self._publisher(publish)), tasks.create_task(self._purger())]
                if self.sync is not None:
                    workers.append(tasks.create_task(self.sync.run()))
                await stop.wait()
                for worker in workers:
                    worker.cancel()
        finally:
            await self.storage.call(self.store.close)
            self.storage.close()

    async def _enqueue(self, message: Outgoing) -> None:
        await self._outbox.put(message)

    async def _publisher(self, publish: Publish) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await publish(message.topic, message.payload)
            except (MqttError, TimeoutError) as exc:
                # a requester that got no answer asks again; sync re-reconciles on its own
                self.publish_failures += 1
                if not self._publish_failing:
                    log.warning("event=shadow-publish-failed topic=%s reason=%s", message.topic, exc)
                self._publish_failing = True
            else:
                if self._publish_failing:
                    log.info("event=shadow-publish-recovered failures=%d", self.publish_failures)
                self._publish_failing = False

    async def _purger(self) -> None:
        while True:
            purged = await self.storage.call(self.store.purge_tombstones, time.time() - TOMBSTONE_S)
            if purged:
                log.info("event=shadow-tombstones-purged count=%d", purged)
            await asyncio.sleep(PURGE_EVERY_S)
