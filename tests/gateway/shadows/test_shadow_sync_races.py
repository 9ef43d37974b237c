"""Shadow sync against changes that land while a merge is in flight, answers that come in another order,
and a second gateway on the same cloud shadow. As in test_shadow_sync.py, the cloud is a second shadow
handler (AWS semantics, ../shared/aws-shadow-semantics.md) behind a relay that does what the uplink does
(topics in gateway/topics.py); here it hands every answer to every gateway syncing the shadow, as AWS
publishes to every subscriber [S2], and lets a test act in the middle of a request."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.config import ShadowSync
from gateway.mqtt import Received
from gateway.shadows.handler import Outgoing, ShadowHandler
from gateway.shadows.sync import LINK_TOPIC, ShadowSyncEngine
from gateway.storage_thread import StorageThread
from gateway.topics import parse_shadow_request, shadow_sync_cloud_topic, shadow_sync_down_topic
from storage.shadows import ShadowStore

THING = "press"
Direction = Literal["local-to-cloud", "cloud-to-local", "both"]


class Cloud:
    def __init__(self, storage: StorageThread, path: Path):
        self.storage = storage
        self.handler = ShadowHandler(storage.run(ShadowStore, path))
        self.gateways: list[Gateway] = []
        # runs once, while the answer to the next request of that operation is on its way
        self.in_flight: dict[str, Callable[[], Awaitable[None]]] = {}
        self.documents_first = False  # publish /update/documents before /update/accepted [S10: no order]

    async def request(self, operation: str, payload: bytes) -> None:
        outcome = await self.storage.call(self.handler.handle, THING, None, operation, payload)
        hook = self.in_flight.pop(operation, None)
        if hook is not None:
            await hook()
        self.publish(outcome.messages)

    def fleet(self, operation: str, state: dict[str, Any] | None = None) -> None:
        """An application's request in the cloud; its answers reach every gateway."""
        payload = json.dumps({"state": state}).encode() if state is not None else b""
        outcome = self.storage.run(self.handler.handle, THING, None, operation, payload)
        assert outcome.error is None, outcome.error
        self.publish(outcome.messages)

    def publish(self, messages: list[Outgoing]) -> None:
        if self.documents_first:
            messages = sorted(messages, key=lambda m: not m.topic.endswith("/documents"))
        loop = asyncio.get_running_loop()
        for message in messages:
            for gateway in self.gateways:
                received = Received(shadow_sync_down_topic(message.topic), message.payload, 1, False)
                loop.call_soon(asyncio.ensure_future, gateway.engine.on_message(received))

    def state(self) -> dict[str, Any] | None:
        row = self.storage.run(self.handler.live, THING, None)
        return row.state if row else None

    def version(self) -> int:
        row = self.storage.run(self.handler.live, THING, None)
        assert row is not None
        return row.version


class Gateway:
    """One gateway's local shadow service and sync engine, relayed to the shared cloud."""

    def __init__(self, storage: StorageThread, path: Path, cloud: Cloud, direction: Direction = "both"):
        self.storage = storage
        self.cloud = cloud
        self.local = ShadowHandler(storage.run(ShadowStore, path))
        self.engine = ShadowSyncEngine(self.local, storage, self.relay, [ShadowSync(thing=THING, sync=direction)])
        cloud.gateways.append(self)

    async def relay(self, message: Outgoing) -> None:
        cloud_topic = shadow_sync_cloud_topic(message.topic)
        if cloud_topic is None:
            return  # a local shadow message, published on the local broker in the product
        request = parse_shadow_request(cloud_topic)
        assert request is not None
        await self.cloud.request(request[2], message.payload)

    async def device(self, state: dict[str, Any]) -> None:
        """A device's update on the local broker, as the shadow service hands it to sync."""
        payload = json.dumps({"state": state}).encode()
        outcome = await self.storage.call(self.local.handle, THING, None, "update", payload)
        assert outcome.error is None and outcome.change is not None, outcome.error
        await self.engine.on_local_change(outcome.change)

    async def link_up(self, session: int = 1) -> None:
        payload = json.dumps({"connected": True, "session": session}).encode()
        await self.engine.on_message(Received(LINK_TOPIC, payload, 1, True))

    def state(self) -> dict[str, Any] | None:
        row = self.storage.run(self.local.live, THING, None)
        return row.state if row else None


async def drain(*gateways: Gateway) -> None:
    def idle() -> bool:
        return all(g.engine._queue.empty() and not g.engine._waiting for g in gateways)

    for _ in range(200):
        await asyncio.sleep(0.01)
        if idle():
            await asyncio.sleep(0.05)
            if idle():
                return


def run(scenario: Callable[[StorageThread], Awaitable[None]]) -> None:
    storage = StorageThread()

    async def main() -> None:
        await scenario(storage)

    try:
        asyncio.run(main())
    finally:
        storage.close()


# ---- item: a local change made while the cloud GET is in flight ---------------------------------


def test_a_device_report_made_during_the_cloud_get_is_not_overwritten_by_the_cloud(tmp_path: Path) -> None:
    """aws-shadow-semantics.md section 2: an update with `version` applies only at that version, so the
    merge's write, computed from "no local shadow yet", must fail and be redone when the device created
    the shadow meanwhile (the review's t6)."""

    async def scenario(storage: StorageThread) -> None:
        cloud = Cloud(storage, tmp_path / "cloud.db")
        gw = Gateway(storage, tmp_path / "local.db", cloud)
        cloud.fleet("update", {"reported": {"t": 1}})  # a stale report from last week
        cloud.in_flight["get"] = lambda: gw.device({"reported": {"t": 5}})  # the device boots meanwhile
        runner = asyncio.create_task(gw.engine.run())
        await gw.link_up()
        await drain(gw)
        assert gw.state() == {"reported": {"t": 5}}, "the plant's report wins the reported section"
        assert cloud.state() == {"reported": {"t": 5}}
        runner.cancel()

    run(scenario)


def test_a_device_report_made_during_the_cloud_get_survives_a_cloud_delete(tmp_path: Path) -> None:
    """sections 2 and 5: the cloud shadow was deleted; the local delete that mirrors it must not take
    a report the device made after the merge read the local shadow."""

    async def scenario(storage: StorageThread) -> None:
        cloud = Cloud(storage, tmp_path / "cloud.db")
        gw = Gateway(storage, tmp_path / "local.db", cloud)
        runner = asyncio.create_task(gw.engine.run())
        await gw.link_up()
        await gw.device({"reported": {"t": 1}})
        await drain(gw)
        assert cloud.state() == {"reported": {"t": 1}}
        cloud.in_flight["get"] = lambda: gw.device({"reported": {"t": 2}})
        cloud.fleet("delete")
        await drain(gw)
        assert gw.state() == {"reported": {"t": 2}}, "the device's new report was deleted"
        assert cloud.state() == {"reported": {"t": 2}}, "and goes up, re-creating the cloud shadow"
        runner.cancel()

    run(scenario)


def test_a_cloud_shadow_created_during_the_cloud_get_is_merged_not_overwritten(tmp_path: Path) -> None:
    """section 2: the push that creates the cloud shadow carries the version a new shadow starts from,
    so the fleet's shadow created meanwhile makes it fail (409) and the merge is redone: the fleet's
    desired reaches the gateway."""

    async def scenario(storage: StorageThread) -> None:
        cloud = Cloud(storage, tmp_path / "cloud.db")
        gw = Gateway(storage, tmp_path / "local.db", cloud)
        await gw.device({"reported": {"a": 1}})

        async def fleet_creates() -> None:
            cloud.fleet("update", {"desired": {"speed": 9}})

        cloud.in_flight["get"] = fleet_creates  # the GET's answer is 404
        runner = asyncio.create_task(gw.engine.run())
        await gw.link_up()
        await drain(gw)
        both = {"desired": {"speed": 9}, "reported": {"a": 1}}
        assert cloud.state() == both
        assert gw.state() == both, "the fleet's desired never came down"
        runner.cancel()

    run(scenario)


def test_a_cloud_shadow_deleted_elsewhere_is_recreated_though_its_version_is_unknown(tmp_path: Path) -> None:
    """section 5: a shadow re-created within 48 h continues the deleted one's version, which the
    gateway cannot know when the fleet deleted it; the guarded create is refused and sync creates it
    without a version rather than retrying forever."""

    async def scenario(storage: StorageThread) -> None:
        cloud = Cloud(storage, tmp_path / "cloud.db")
        gw = Gateway(storage, tmp_path / "local.db", cloud)
        for speed in (1, 2, 3):
            cloud.fleet("update", {"desired": {"speed": speed}})
        cloud.fleet("delete")  # tombstone at version 3
        await gw.device({"reported": {"a": 1}})
        runner = asyncio.create_task(gw.engine.run())
        await gw.link_up()
        await drain(gw)
        assert cloud.state() == {"reported": {"a": 1}} and cloud.version() == 4
        assert gw.engine.state == "in-sync"
        runner.cancel()

    run(scenario)


# ---- item: /update/documents before /update/accepted --------------------------------------------


def test_update_documents_arriving_before_update_accepted_does_not_fail_the_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sections 1 and 7: `/update/documents` echoes the clientToken as `/update/accepted` does, and
    message order is not guaranteed [S10]; only the answer on /accepted or /rejected settles a request."""

    async def scenario(storage: StorageThread) -> None:
        cloud = Cloud(storage, tmp_path / "cloud.db")
        cloud.documents_first = True
        gw = Gateway(storage, tmp_path / "local.db", cloud)
        runner = asyncio.create_task(gw.engine.run())
        await gw.link_up()
        await gw.device({"reported": {"t": 1}})
        await drain(gw)
        assert cloud.state() == {"reported": {"t": 1}}
        assert gw.engine.state == "in-sync"
        runner.cancel()

    with caplog.at_level(logging.INFO, logger="gateway.shadows.sync"):
        run(scenario)
    retries = [r.getMessage() for r in caplog.records if "shadow-sync-retrying" in r.getMessage()]
    assert retries == [], retries


# ---- item: a second gateway on the same cloud shadow ---------------------------------------------


def test_a_change_another_gateway_syncs_up_reaches_this_gateway(tmp_path: Path) -> None:
    """section 1: every subscriber of the shadow topics sees `/update/documents`; another gateway's
    sync tokens are not this engine's own, so its change is pulled down here."""

    async def scenario(storage: StorageThread) -> None:
        cloud = Cloud(storage, tmp_path / "cloud.db")
        line1 = Gateway(storage, tmp_path / "line1.db", cloud)
        line2 = Gateway(storage, tmp_path / "line2.db", cloud)
        runners = [asyncio.create_task(g.engine.run()) for g in (line1, line2)]
        await line1.link_up()
        await line2.link_up()
        await drain(line1, line2)
        await line2.device({"reported": {"recipe": "B1"}})
        await drain(line1, line2)
        assert cloud.state() == {"reported": {"recipe": "B1"}}
        assert line1.state() == {"reported": {"recipe": "B1"}}, "line 1 took line 2's sync for its own"
        for runner in runners:
            runner.cancel()

    run(scenario)
