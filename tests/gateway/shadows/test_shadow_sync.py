"""Shadow sync, service side: the reconciliation rule (gateway/shadows/sync.py's docstring) as the pure
functions of gateway/shadows/reconcile.py, and the engine through an outage against a cloud played by a
second shadow handler (AWS semantics) behind a relay that does what the uplink must do (topics in
gateway/topics.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

from gateway.config import ShadowSync
from gateway.mqtt import Received
from gateway.shadows.handler import Change, Outgoing, ShadowHandler
from gateway.shadows.reconcile import reconcile, state_patch
from gateway.shadows.sync import LINK_TOPIC, ShadowSyncEngine
from gateway.storage_thread import StorageThread
from gateway.topics import parse_shadow_request, shadow_sync_cloud_topic, shadow_sync_down_topic
from storage.shadows import ShadowStore


def test_one_sided_changes_are_taken_from_the_side_that_made_them() -> None:
    base = {"desired": {"speed": 1}, "reported": {"speed": 1, "temp": 20}}
    local = {"desired": {"speed": 1}, "reported": {"speed": 1, "temp": 25}}
    cloud = {"desired": {"speed": 2}, "reported": {"speed": 1, "temp": 20}}
    assert reconcile(base, local, cloud, "both") == {"desired": {"speed": 2}, "reported": {"speed": 1, "temp": 25}}


def test_conflicts_go_to_the_section_owner_reported_local_desired_cloud() -> None:
    base = {"desired": {"m": "a"}, "reported": {"m": "a"}}
    local = {"desired": {"m": "local"}, "reported": {"m": "local"}}
    cloud = {"desired": {"m": "cloud"}, "reported": {"m": "cloud"}}
    assert reconcile(base, local, cloud, "both") == {"desired": {"m": "cloud"}, "reported": {"m": "local"}}
    assert reconcile(base, local, cloud, "cloud-to-local") == {"desired": {"m": "cloud"}, "reported": {"m": "cloud"}}
    assert reconcile(base, local, cloud, "local-to-cloud") == {"desired": {"m": "local"}, "reported": {"m": "local"}}


def test_a_field_removed_on_one_side_stays_removed() -> None:
    base = {"reported": {"a": 1, "b": 2}}
    assert reconcile(base, {"reported": {"b": 2}}, base, "both") == {"reported": {"b": 2}}


def test_state_patch_turns_old_into_new_with_nulls() -> None:
    old = {"a": 1, "n": {"x": 1, "y": 2}, "gone": True}
    new = {"a": 1, "n": {"x": 5}, "added": [1]}
    assert state_patch(old, new) == {"gone": None, "n": {"x": 5, "y": None}, "added": [1]}


class Harness:
    """The local service's handler, the engine, and a relay + cloud that answer like the uplink and AWS."""

    def __init__(self, tmp: Path, direction: Literal["local-to-cloud", "cloud-to-local", "both"]):
        self.storage = StorageThread()
        self.local = ShadowHandler(self.storage.run(ShadowStore, tmp / "local.db"))
        self.cloud = ShadowHandler(self.storage.run(ShadowStore, tmp / "cloud.db"))
        self.cloud_writes = 0
        self.engine = ShadowSyncEngine(
            self.local, self.storage, self.relay, [ShadowSync(thing="press", sync=direction)]
        )

    async def relay(self, message: Outgoing) -> None:
        cloud_topic = shadow_sync_cloud_topic(message.topic)
        if cloud_topic is None:
            return  # a local shadow message, published on the local broker in the product
        thing, name, operation = parse_shadow_request(cloud_topic) or ("", None, "")
        outcome = await self.storage.call(self.cloud.handle, thing, name, operation, message.payload)
        if outcome.change is not None:
            self.cloud_writes += 1
        for answer in outcome.messages:
            received = Received(shadow_sync_down_topic(answer.topic), answer.payload, 1, False)
            asyncio.get_running_loop().call_soon(asyncio.ensure_future, self.engine.on_message(received))

    def write(self, side: ShadowHandler, state: dict[str, Any]) -> Change | None:
        outcome = self.storage.run(side.handle, "press", None, "update", json.dumps({"state": state}).encode())
        assert outcome.error is None, outcome.error
        return outcome.change

    def state(self, side: ShadowHandler) -> dict[str, Any] | None:
        row = self.storage.run(side.live, "press", None)
        return row.state if row else None

    async def link(self, connected: bool, session: int) -> None:
        payload = json.dumps({"connected": connected, "session": session}).encode()
        await self.engine.on_message(Received(LINK_TOPIC, payload, 1, True))

    async def drain(self) -> None:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if self.engine._queue.empty() and not self.engine._waiting:
                await asyncio.sleep(0.02)
                if self.engine._queue.empty() and not self.engine._waiting:
                    return


def test_both_directions_reconcile_after_an_outage_without_losing_or_repeating(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path, "both")
        runner = asyncio.create_task(h.engine.run())
        h.write(h.local, {"desired": {"speed": 1}, "reported": {"speed": 1}})
        await h.link(True, 1)
        await h.drain()
        assert h.state(h.cloud) == h.state(h.local) == {"desired": {"speed": 1}, "reported": {"speed": 1}}
        await h.link(False, 1)
        # the outage: the plant reports, the fleet asks for more, and both touch `mode`
        change = h.write(h.local, {"reported": {"temp": 70, "mode": "manual"}, "desired": {"mode": "manual"}})
        assert change is not None
        await h.engine.on_local_change(change)  # queued, but the link is down
        h.write(h.cloud, {"desired": {"speed": 2, "mode": "auto"}, "reported": {"mode": "auto"}})
        await h.link(True, 2)
        await h.drain()
        expected = {"desired": {"speed": 2, "mode": "auto"}, "reported": {"speed": 1, "temp": 70, "mode": "manual"}}
        assert h.state(h.local) == expected and h.state(h.cloud) == expected
        writes = h.cloud_writes
        await h.link(True, 3)  # a reconnect with nothing new: nothing is written again
        await h.drain()
        assert h.cloud_writes == writes
        runner.cancel()
        h.storage.close()

    asyncio.run(scenario())


def test_cloud_to_local_keeps_local_only_edits_and_never_writes_the_cloud(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path, "cloud-to-local")
        runner = asyncio.create_task(h.engine.run())
        h.write(h.cloud, {"desired": {"speed": 5}})
        await h.link(True, 1)
        await h.drain()
        assert h.state(h.local) == {"desired": {"speed": 5}}
        h.write(h.local, {"reported": {"speed": 5}})
        h.write(h.cloud, {"desired": {"speed": 6}})
        await h.link(True, 2)
        await h.drain()
        assert h.state(h.local) == {"desired": {"speed": 6}, "reported": {"speed": 5}}
        assert h.state(h.cloud) == {"desired": {"speed": 6}}
        assert h.cloud_writes == 0
        runner.cancel()
        h.storage.close()

    asyncio.run(scenario())


def test_local_delete_reaches_the_cloud(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path, "both")
        runner = asyncio.create_task(h.engine.run())
        h.write(h.local, {"reported": {"a": 1}})
        await h.link(True, 1)
        await h.drain()
        outcome = h.storage.run(h.local.handle, "press", None, "delete", b"")
        assert outcome.change is not None
        await h.engine.on_local_change(outcome.change)
        await h.drain()
        assert h.state(h.cloud) is None and h.state(h.local) is None
        runner.cancel()
        h.storage.close()

    asyncio.run(scenario())
