"""Spool to cloud: while the link is up, send waiting messages in spool order (each topic in order,
higher priorities first) with a window of QoS 1 publishes in flight, delete each on its PUBACK, count
refusals and bury a message refused too often, and start over from the oldest after a reconnect.

It neither connects nor stores: the cloud link and the spool do that.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.backoff import Backoff
from gateway.storage_thread import StorageThread
from gateway.uplink.cloud_link import Ack, CloudLink, LinkDown
from gateway.uplink.metrics import UplinkMetrics
from storage.spool import Spool

log = logging.getLogger(__name__)

FLUSH_EVERY = 256  # deletes per transaction at most
FLUSH_INTERVAL_S = 0.05
IDLE_POLL_S = 1.0


class Drain:
    def __init__(
        self,
        spool: Spool,
        storage: StorageThread,
        link: CloudLink,
        metrics: UplinkMetrics,
        wake: asyncio.Event,
        *,
        window: int,
        dead_after: int,
        retry: Backoff | None = None,
    ):
        self.spool = spool
        self.storage = storage
        self.link = link
        self.metrics = metrics
        self.wake = wake
        self.window = window
        self.dead_after = dead_after
        self.retry = retry or Backoff(initial_s=0.5, cap_s=30.0)
        self._session = -1
        self._inflight: dict[int, int] = {}  # mid -> spool id
        self._slots = asyncio.Semaphore(window)
        self._acked: list[int] = []
        self._refusals: dict[int, str] = {}
        self._flush = asyncio.Event()
        self._refused_this_pass = False
        self._refusing: str | None = None
        link.on_ack(self._on_ack)

    async def run(self) -> None:
        while True:
            await self.link.connected_event.wait()
            self._session = self.link.session
            self._inflight.clear()
            self._slots = asyncio.Semaphore(self.window)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._send())
                    tasks.create_task(self._flusher())
                    tasks.create_task(self._watch_link())
            except* LinkDown:
                pass
            finally:
                self._session = -1
                self._inflight.clear()
                await self._flush_now()

    async def _watch_link(self) -> None:
        await self.link.lost_event.wait()
        raise LinkDown("cloud link lost")

    async def _send(self) -> None:
        cursors: dict[int, int] = {}
        while True:
            self.wake.clear()
            batch = await self.storage.call(self.spool.next_batch, cursors, self.window * 2)
            if not batch:
                if self._refused_this_pass:
                    await self._retry_refused(cursors)
                    continue
                try:
                    async with asyncio.timeout(IDLE_POLL_S):
                        await self.wake.wait()
                except TimeoutError:
                    pass
                continue
            for message in batch:
                await self._slots.acquire()
                mid = self.link.publish(message.topic, message.payload, message.properties)
                self._inflight[mid] = message.id

    async def _retry_refused(self, cursors: dict[int, int]) -> None:
        """Refused messages stay in the spool behind the cursors: wait for the window to empty and
        the refusals to be counted, back off, then scan again from the oldest."""
        while self._inflight:
            await asyncio.sleep(FLUSH_INTERVAL_S)
        await self._flush_now()
        self._refused_this_pass = False
        await asyncio.sleep(self.retry.next_delay())
        cursors.clear()

    def _on_ack(self, session: int, ack: Ack) -> None:
        if session != self._session:
            return  # an old connection's PUBACK: that message is being sent again anyway
        spool_id = self._inflight.pop(ack.mid, None)
        if spool_id is None:
            return
        self._slots.release()
        if ack.refused is None:
            self._acked.append(spool_id)
            self.metrics.drained.add()
        else:
            self._refusals[spool_id] = ack.refused
            self._refused_this_pass = True
            self.metrics.refused_by_cloud += 1
        if len(self._acked) >= FLUSH_EVERY or self._refusals:
            self._flush.set()

    async def _flusher(self) -> None:
        while True:
            try:
                async with asyncio.timeout(FLUSH_INTERVAL_S):
                    await self._flush.wait()
            except TimeoutError:
                pass
            self._flush.clear()
            await self._flush_now()

    async def _flush_now(self) -> None:
        acked, self._acked = self._acked, []
        refusals, self._refusals = self._refusals, {}
        if acked:
            await self.storage.call(self.spool.delete, acked)
        if refusals:
            reason = next(iter(refusals.values()))
            buried = await self.storage.call(self.spool.refused, refusals, self.dead_after)
            if reason != self._refusing:
                self._refusing = reason
                log.warning(
                    "event=cloud-refusing reason=%s action=retried with backoff, then moved to the dead letters "
                    "after dead_after=%d refusals",
                    reason,
                    self.dead_after,
                )
            if buried:
                log.error("event=dead-letter count=%d reason=%s action=see `millgate spool stats`", buried, reason)
        elif acked and not self._refused_this_pass:
            self.retry.reset()
            self._refusing = None
