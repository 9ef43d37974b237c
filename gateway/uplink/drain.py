"""Spool to cloud: while the link is up, send waiting messages in spool order (each topic in order,
higher priorities first) with a window of QoS 1 publishes in flight, delete each on its PUBACK, count
refusals and bury a message refused too often, and start over from the oldest after a reconnect.

A cloud may refuse a message by hanging up instead of with a PUBACK reason code (MQTT 3.1.1 has none;
AWS IoT disconnects on an unauthorized publish). When the link drops within seconds of the oldest
unacknowledged publish, that message is charged a try like a refusal, and the next connection sends one
message at a time for a window's worth, so that a message that keeps taking the link down is alone in
flight when it does, and is buried after `dead_after` such drops instead of blocking what follows.

It neither connects nor stores: the cloud link and the spool do that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gateway.backoff import Backoff
from gateway.storage_thread import StorageThread
from gateway.uplink.cloud_link import Ack, CloudLink, LinkDown
from gateway.uplink.metrics import UplinkMetrics
from storage.spool import DEAD_LINK_DROPPED, Spool

log = logging.getLogger(__name__)

FLUSH_EVERY = 256  # deletes per transaction at most
FLUSH_INTERVAL_S = 0.05
IDLE_POLL_S = 1.0
# a cloud that hangs up on a message does so as it reads it; an outage is noticed by a keepalive or a
# failed write, usually long after the oldest publish still waiting for its PUBACK
SUSPECT_DROP_WITHIN_S = 5.0
LINK_DROPPED = "link dropped while in flight"


@dataclass(frozen=True)
class InFlight:
    spool_id: int
    topic: str
    sent_at: float  # time.monotonic()


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
        self._inflight: dict[int, InFlight] = {}  # by mid, in send order
        self._careful = 0  # after a suspicious drop: messages still to send one at a time
        self._suspect: int | None = None  # the spool id last charged for a drop
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
            self._slots = asyncio.Semaphore(1 if self._careful else self.window)
            suspect: tuple[int, str] | None = None
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._send())
                    tasks.create_task(self._flusher())
                    tasks.create_task(self._watch_link())
            except* LinkDown:
                suspect = self._oldest_in_flight(time.monotonic())
            finally:
                self._session = -1
                self._inflight.clear()
                await self._flush_now()
            if suspect is not None:
                await self._charge_drop(*suspect)

    def _oldest_in_flight(self, now: float) -> tuple[int, str] | None:
        """(spool id, topic) of the oldest unacknowledged publish if it was sent just before the drop."""
        oldest = next(iter(self._inflight.values()), None)
        if oldest is None or now - oldest.sent_at > SUSPECT_DROP_WITHIN_S:
            return None
        return oldest.spool_id, oldest.topic

    async def _charge_drop(self, spool_id: int, topic: str) -> None:
        """One try against the message the link dropped on; only the oldest: what was sent after it
        may have been cut off with it, and is charged only if it ends up alone in flight (careful)."""
        self._careful = self.window
        buried = await self.storage.call(
            self.spool.refused, {spool_id: LINK_DROPPED}, self.dead_after, DEAD_LINK_DROPPED
        )
        if spool_id != self._suspect:
            self._suspect = spool_id
            log.warning(
                "event=cloud-link-dropped-in-flight topic=%s spool_id=%d action=counted as a refusal; the next "
                "connection sends one message at a time, and a message the link drops on dead_after=%d times "
                "goes to the dead letters",
                topic,
                spool_id,
                self.dead_after,
            )
        if buried:
            log.error(
                "event=dead-letter count=%d topic=%s reason=%s action=see `millgate spool stats`; check what the "
                "cloud allows this thing to publish",
                buried,
                topic,
                LINK_DROPPED,
            )

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
                self._inflight[mid] = InFlight(message.id, message.topic, time.monotonic())

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
        sent = self._inflight.pop(ack.mid, None)
        if sent is None:
            return
        spool_id = sent.spool_id
        self._slots.release()
        if self._careful:
            self._careful -= 1
            if not self._careful:
                for _ in range(self.window - 1):  # careful pass over: the full window again
                    self._slots.release()
        if ack.refused is None:
            self._acked.append(spool_id)
            self.metrics.drained.add()
        elif ack.transient:
            # left in the spool and sent again after a backoff, without counting a try against it
            self._refused_this_pass = True
            self.metrics.throttled_by_cloud += 1
            if self._refusing != ack.refused:
                self._refusing = ack.refused
                log.warning(
                    "event=cloud-throttling reason=%s action=retried with backoff, not counted toward the dead letters",
                    ack.refused,
                )
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
