"""The drain against a cloud that answers a PUBACK with "quota exceeded" (MQTT 5.0 reason code 0x97: AWS
IoT's answer past a throttling limit): the message stays in the spool and is sent again after a backoff,
never counted toward dead_letter_after; a refusal that means "never" (0x87 not authorized) still is.
mosquitto never answers 0x97, so the cloud here is a scripted link; the spool and its storage thread are
the real ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import Backoff
from gateway.storage_thread import StorageThread
from gateway.uplink.cloud_link import TRANSIENT_PUBACK_CODES, Ack, AckHandler
from gateway.uplink.drain import Drain
from gateway.uplink.metrics import UplinkMetrics
from storage.spool import Message, Spool

QUOTA_EXCEEDED = 0x97
NOT_AUTHORIZED = 0x87


class ScriptedCloud:
    """What Drain uses of CloudLink; answers each publish of a topic with the next code in its script
    (then success), the way paho's on_publish hands them over."""

    def __init__(self, script: dict[str, list[int]]):
        self.script = script
        self.session = 1
        self.connected_event = asyncio.Event()
        self.connected_event.set()
        self.lost_event = asyncio.Event()
        self.delivered: list[str] = []
        self._handler: AckHandler | None = None
        self._mid = 0

    def on_ack(self, handler: AckHandler) -> None:
        self._handler = handler

    def publish(self, topic: str, payload: bytes, properties: object = None) -> int:
        self._mid += 1
        codes = self.script.get(topic, [])
        code = codes.pop(0) if codes else 0
        reason = ReasonCode(PacketTypes.PUBACK, identifier=code)
        if not reason.is_failure:
            self.delivered.append(topic)
        ack = Ack(self._mid, str(reason) if reason.is_failure else None, transient=code in TRANSIENT_PUBACK_CODES)
        assert self._handler is not None
        asyncio.get_running_loop().call_soon(self._handler, self.session, ack)
        return self._mid


async def drain_until(
    spool: Spool, storage: StorageThread, cloud: ScriptedCloud, metrics: UplinkMetrics, done: asyncio.Event
) -> None:
    drain = Drain(
        spool,
        storage,
        cloud,
        metrics,
        asyncio.Event(),
        window=10,
        dead_after=2,
        retry=Backoff(0.01, 0.05),  # type: ignore[arg-type]
    )
    task = asyncio.create_task(drain.run())
    try:
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_throttled_message_is_sent_again_and_never_buried(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.append([Message("plant/busy", b"1"), Message("plant/denied", b"2"), Message("plant/ok", b"3")])
    cloud = ScriptedCloud({"plant/busy": [QUOTA_EXCEEDED] * 6, "plant/denied": [NOT_AUTHORIZED] * 6})
    metrics = UplinkMetrics()

    storage = StorageThread()  # the spool is used from its thread only

    async def scenario() -> None:
        done = asyncio.Event()

        async def watch() -> None:
            while "plant/busy" not in cloud.delivered or not (await storage.call(spool.stats)).dead_letters:
                await asyncio.sleep(0.02)
            done.set()

        watcher = asyncio.create_task(watch())
        await drain_until(spool, storage, cloud, metrics, done)
        await watcher

    asyncio.run(scenario())
    dead_letters = storage.run(lambda: list(spool.dead_letters()))
    storage.close()
    assert cloud.delivered.count("plant/busy") == 1 and "plant/ok" in cloud.delivered
    assert metrics.throttled_by_cloud == 6  # six times "not now", each retried, none counted as a try
    (dead,) = dead_letters
    assert dead.topic == "plant/denied" and dead.tries == 2 and "Not authorized" in dead.reason
