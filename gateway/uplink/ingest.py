"""Local cloud-bound messages into the spool: a bounded queue, one SQLite commit for everything that
arrived while the previous commit ran (group commit), and the local PUBACK only after that commit.

It does not send anything to the cloud; it wakes the drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.mqtt import Received
from gateway.storage_thread import StorageThread
from gateway.uplink.message_properties import spooled_properties
from gateway.uplink.metrics import UplinkMetrics
from storage.bulk import BulkRecord, BulkStore
from storage.spool import AppendResult, Message, Spool

log = logging.getLogger(__name__)


class Ingest:
    def __init__(
        self,
        spool: Spool,
        storage: StorageThread,
        ack: Callable[[Received], None],
        metrics: UplinkMetrics,
        wake: asyncio.Event,
        *,
        max_batch: int = 1000,
        bulk: BulkStore | None = None,
        is_bulk: Callable[[str], bool] = lambda _topic: False,
    ):
        self.spool = spool
        self.storage = storage
        self.ack = ack
        self.metrics = metrics
        self.wake = wake
        self.max_batch = max_batch
        self.bulk = bulk
        self.is_bulk = is_bulk
        self.queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=max_batch * 2)

    async def on_message(self, received: Received) -> None:
        """LocalMqtt's handler: a full queue holds the broker back, which queues for us."""
        await self.queue.put(received)

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self._commit(batch)
            for received in batch:
                self.ack(received)
            self.wake.set()

    async def _commit(self, batch: list[Received]) -> None:
        now = time.time()
        spooled = [
            Message(r.topic, r.payload, r.qos, now, spooled_properties(r.properties, now))
            for r in batch
            if not self.is_bulk(r.topic)
        ]
        if self.bulk is not None and len(spooled) < len(batch):
            records = [BulkRecord(r.topic, r.payload, now) for r in batch if self.is_bulk(r.topic)]
            added = await self.storage.call(self.bulk.add, records)
            self._set_bulk_condition(added)
        if spooled:
            result = await self.storage.call(self.spool.append, spooled)
            condition = (
                "disk-full" if result.disk_full else "full" if result.dropped_oldest or result.rejected else "ok"
            )
            self._set_condition(condition, result.dropped_oldest, result.rejected)
            if result.dead:
                log.error(
                    "event=dead-letter reason=payload-over-limit count=%d limit=%d action=see-millgate-spool-stats",
                    result.dead,
                    self.spool.max_payload_bytes or 0,
                )
        self.metrics.received.add(len(batch))
        self.metrics.received_bytes.add(sum(len(r.payload) + len(r.topic) for r in batch))

    def _set_bulk_condition(self, added: AppendResult) -> None:
        """The bulk store's cap or a full disk, logged once per change like the spool's."""
        assert self.bulk is not None
        condition = "disk-full" if added.disk_full else "full" if added.dropped_oldest or added.rejected else "ok"
        previous, self.metrics.bulk_condition = self.metrics.bulk_condition, condition
        if condition == previous:
            return
        if condition == "ok":
            log.info("event=bulk-accepting path=%s", self.bulk.path)
            return
        log.error(
            "event=bulk-%s path=%s policy=%s detail=%s; %s. Let the batches upload (check [bulk] windows and "
            "S3), raise [bulk] max_bytes or free disk space",
            condition,
            self.bulk.path,
            self.bulk.policy,
            "the disk is full" if condition == "disk-full" else f"max_bytes={self.bulk.max_bytes} is reached",
            f"dropping the oldest batches and records (dropped={added.dropped_oldest})"
            if self.bulk.policy == "drop-oldest"
            else f"refusing new records (rejected={added.rejected})",
        )

    def _set_condition(self, condition: str, dropped: int, rejected: int) -> None:
        previous, self.metrics.spool_condition = self.metrics.spool_condition, condition
        if condition == previous:
            return
        if condition == "ok":
            log.info("event=spool-accepting path=%s", self.spool.path)
            return
        what = {
            "drop-oldest": f"dropping the oldest messages to keep the newest (dropped={dropped})",
            "reject-new": f"refusing new messages (rejected={rejected})",
        }[self.spool.policy]
        cause = "the disk is full" if condition == "disk-full" else f"max_bytes={self.spool.max_bytes} is reached"
        log.error(
            "event=spool-%s path=%s policy=%s detail=%s; %s. Restore the cloud link, raise [spool] max_bytes "
            "or free disk space",
            condition,
            self.spool.path,
            self.spool.policy,
            cause,
            what,
        )
