"""Keeps configured local shadows and their AWS IoT cloud copies in step, through the uplink: it asks
the uplink to publish shadow requests in the cloud and reads the cloud's answers the uplink hands back
(topics and the uplink-side contract in `gateway/topics.py`, shadow-sync section).

Reconciliation rule (the same after an outage as live): a three-way merge against the last state both
sides agreed on (the *base*, kept in shadows.db). A field changed on one side only takes that side's
value; a field changed differently on both sides is a conflict, won by the section's owner: `reported`
by the local side (the plant reports), `desired` by the cloud (the fleet decides). With one-way sync the
source side wins every conflict and only the other side is written. Every write carries the `version`
the merge was computed from, so a concurrent change makes it fail (409) and the merge is redone;
re-running a finished merge changes nothing, so no change is lost or applied twice. Timestamps are not
compared: the gateway's clock and AWS's are not the same clock.

It never touches the cloud link itself and never writes shadows.db except through the handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import ShadowSync
from gateway.mqtt import Received
from gateway.shadows import document as doc
from gateway.shadows.document import Json
from gateway.shadows.handler import Change, Outgoing, ShadowHandler
from gateway.storage_thread import StorageThread
from gateway.topics import (
    SHADOW_SYNC_DOWN_FILTER,
    SHADOW_SYNC_DOWN_PREFIX,
    parse_shadow_request,
    shadow_sync_cloud_topic,
    shadow_sync_up_topic,
    shadow_topic,
)
from storage.shadows import SyncBase

log = logging.getLogger(__name__)

SYNC_TOKEN_PREFIX = "millgate-sync-"
LINK_TOPIC = SHADOW_SYNC_DOWN_PREFIX + "link"  # retained by the uplink: {"connected": bool, "session": n}
CLOUD_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 5

_MISSING: Any = object()


# ---- the rule, as pure functions ----------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    return doc.same_value(a, b)


def merge3(base: Any, local: Any, cloud: Any, prefer_local: bool) -> Any:
    """One field's reconciled value; `_MISSING` stands for an absent field."""
    if _same(local, cloud):
        return local
    if _same(local, base):
        return cloud
    if _same(cloud, base):
        return local
    if isinstance(local, dict) and isinstance(cloud, dict):
        inner_base = base if isinstance(base, dict) else {}
        merged = {}
        for key in [*local, *(k for k in cloud if k not in local)]:
            value = merge3(
                inner_base.get(key, _MISSING), local.get(key, _MISSING), cloud.get(key, _MISSING), prefer_local
            )
            if value is not _MISSING:
                merged[key] = value
        return merged
    return local if prefer_local else cloud


def reconcile(base: Json | None, local: Json | None, cloud: Json | None, direction: str) -> Json:
    """The state (desired/reported sections) both sides should hold after a sync."""
    merged: Json = {}
    for section in doc.SECTIONS:
        prefer_local = section == "reported" if direction == "both" else direction == "local-to-cloud"
        value = merge3(
            (base or {}).get(section, _MISSING),
            (local or {}).get(section, _MISSING),
            (cloud or {}).get(section, _MISSING),
            prefer_local,
        )
        if value is not _MISSING and value != {}:
            merged[section] = value
    return merged


def state_patch(old: Json, new: Json) -> Json:
    """The update request `state` that turns `old` into `new` (null removes)."""
    out: Json = {}
    for key in old:
        if key not in new:
            out[key] = None
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            inner = state_patch(old[key], value)
            if inner:
                out[key] = inner
        elif not doc.same_value(old[key], value):
            out[key] = value
    return out


# ---- the engine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudShadow:
    state: Json
    version: int


class CloudUnavailable(Exception):
    pass


class Conflict(Exception):
    """One side changed while the merge was being applied; merge again."""


Key = tuple[str, str | None]


class ShadowSyncEngine:
    def __init__(
        self,
        handler: ShadowHandler,
        storage: StorageThread,
        send: Callable[[Outgoing], Awaitable[None]],
        synced: Sequence[ShadowSync],
    ):
        self.handler = handler
        self.storage = storage
        self.send = send
        self.direction: dict[Key, str] = {(s.thing, s.name): s.sync for s in synced}
        self.connected = False
        self.session: object = None
        self.state = "waiting-for-cloud"
        self.synced_total = 0
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._waiting: dict[str, asyncio.Future[tuple[str, Json]]] = {}

    @property
    def filters(self) -> list[str]:
        return [SHADOW_SYNC_DOWN_FILTER]

    # ---- inputs ---------------------------------------------------------------------------------

    async def on_local_change(self, change: Change) -> None:
        key = (change.thing, change.name)
        direction = self.direction.get(key)
        if direction in ("both", "local-to-cloud") and not (change.client_token or "").startswith(SYNC_TOKEN_PREFIX):
            self._schedule(key)

    async def on_message(self, received: Received) -> None:
        if received.topic == LINK_TOPIC:
            self._on_link(received.payload)
            return
        cloud_topic = shadow_sync_cloud_topic(received.topic)
        if cloud_topic is None:
            return
        base_topic, _, outcome = cloud_topic.rpartition("/")
        parsed = parse_shadow_request(base_topic)
        try:
            answer = json.loads(received.payload)
        except ValueError:
            return
        if parsed is None or not isinstance(answer, dict):
            return
        thing, name, operation = parsed
        token = answer.get("clientToken")
        waiter = self._waiting.get(token) if isinstance(token, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_result((f"{operation}/{outcome}", answer))
            return
        ours = isinstance(token, str) and token.startswith(SYNC_TOKEN_PREFIX)
        if (
            not ours
            and (thing, name) in self.direction
            and (operation, outcome)
            in (
                ("update", "documents"),
                ("delete", "accepted"),
            )
        ):
            self._schedule((thing, name))

    def on_uplink_offline(self) -> None:
        """The uplink died (its last will): a link it left marked connected is gone with it."""
        if self.connected:
            self._on_link(b'{"connected": false}')

    def _on_link(self, payload: bytes) -> None:
        try:
            link = json.loads(payload)
            connected, session = bool(link["connected"]), link.get("session")
        except (ValueError, KeyError, TypeError):
            return
        was = self.connected
        self.connected = connected
        if connected and (not was or session != self.session):
            self.session = session
            log.info("event=shadow-sync-cloud-up shadows=%d", len(self.direction))
            for key in self.direction:
                self._schedule(key)
        elif not connected and was:
            self.state = "waiting-for-cloud"
            log.info("event=shadow-sync-cloud-down")
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(CloudUnavailable("the uplink's cloud link went down"))

    def _schedule(self, key: Key) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    # ---- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if not self.connected:
                continue  # the link's return schedules every shadow again
            try:
                await self._sync(key)
            except CloudUnavailable as exc:
                self.state = "waiting-for-cloud"
                log.info("event=shadow-sync-deferred thing=%s name=%s reason=%s", key[0], key[1], exc)
            except _Rejected as exc:
                self.state = "refused"
                log.error("event=shadow-sync-refused thing=%s name=%s reason=%s", key[0], key[1], exc)
            except Exception:
                self.state = "failed"
                log.exception("event=shadow-sync-failed thing=%s name=%s", key[0], key[1])

    async def _sync(self, key: Key) -> None:
        for _ in range(MAX_ATTEMPTS):
            try:
                await self._sync_once(key)
            except Conflict:
                continue
            self.synced_total += 1
            self.state = "in-sync"
            return
        log.warning("event=shadow-sync-gave-up thing=%s name=%s attempts=%d", key[0], key[1], MAX_ATTEMPTS)
        self.state = "conflicting"

    async def _sync_once(self, key: Key) -> None:
        thing, name = key
        direction = self.direction[key]
        base = await self.storage.call(self.handler.store.sync_base, thing, name or "")
        local_row = await self.storage.call(self.handler.live, thing, name)
        cloud = await self._cloud_get(thing, name)
        local = local_row.state if local_row else None
        local_version = local_row.version if local_row else 0
        cloud_version = cloud.version if cloud else 0
        if base is not None and (base.local_version, base.cloud_version) == (local_version, cloud_version):
            return
        base_state = base.state if base else None
        pushes_up = direction in ("both", "local-to-cloud")
        pulls_down = direction in ("both", "cloud-to-local")

        # whole-shadow deletions: a side deleted since the base while the other did not change
        if base_state is not None and base is not None:
            if local is None and pushes_up and cloud is not None and cloud.version == base.cloud_version:
                await self._cloud_request(thing, name, "delete", {}, "delete/accepted")
                await self._save(thing, name, None, 0, cloud.version)
                return
            if cloud is None and pulls_down and local_row is not None and local_row.version == base.local_version:
                await self._local_request(thing, name, "delete", {})
                await self._save(thing, name, None, local_row.version, 0)
                return

        merged = reconcile(base_state, local, cloud.state if cloud else None, direction)
        if pushes_up and (cloud is None or not doc.same_value(cloud.state, merged)) and (merged or cloud):
            request: Json = {"state": self._patch(cloud.state if cloud else {}, merged)}
            if cloud is not None:
                request["version"] = cloud.version
            answer = await self._cloud_request(thing, name, "update", request, "update/accepted")
            cloud_version = int(answer["version"])
        if pulls_down and (local is None or not doc.same_value(local, merged)) and (merged or local):
            request = {"state": self._patch(local or {}, merged)}
            if local_row is not None:
                request["version"] = local_row.version
            local_version = await self._local_request(thing, name, "update", request)
        # one-way: the base is the source side as last seen, so the other side's own edits survive
        if direction == "both":
            agreed: Json | None = merged
        elif direction == "cloud-to-local":
            agreed = cloud.state if cloud else None
        else:
            agreed = local
        await self._save(thing, name, agreed, local_version, cloud_version)
        log.info(
            "event=shadow-synced thing=%s name=%s direction=%s local_version=%d cloud_version=%d",
            thing,
            name,
            direction,
            local_version,
            cloud_version,
        )

    @staticmethod
    def _patch(old: Json, new: Json) -> Json:
        patch: Json = {}
        for section in doc.SECTIONS:
            if section in old and section not in new:
                patch[section] = None
            elif section in new:
                inner = state_patch(old.get(section, {}), new[section])
                if inner or section not in old:
                    patch[section] = inner
        return patch

    async def _save(self, thing: str, name: str | None, state: Json | None, local: int, cloud: int) -> None:
        base = SyncBase(thing, name or "", state, local, cloud)
        await self.storage.call(self.handler.store.put_sync_base, base)

    # ---- the two sides --------------------------------------------------------------------------

    async def _cloud_get(self, thing: str, name: str | None) -> CloudShadow | None:
        try:
            answer = await self._cloud_request(thing, name, "get", {}, "get/accepted")
        except _Rejected as exc:
            if exc.code == 404:
                return None
            raise CloudUnavailable(f"cloud get refused: {exc.code} {exc.message}") from None
        state = {s: answer["state"][s] for s in doc.SECTIONS if s in answer.get("state", {})}
        return CloudShadow(state, int(answer["version"]))

    async def _cloud_request(self, thing: str, name: str | None, operation: str, body: Json, expect: str) -> Json:
        token = f"{SYNC_TOKEN_PREFIX}{uuid.uuid4().hex}"
        waiter: asyncio.Future[tuple[str, Json]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = waiter
        try:
            payload = json.dumps({**body, "clientToken": token}).encode()
            await self.send(Outgoing(shadow_sync_up_topic(shadow_topic(thing, name, operation)), payload))
            try:
                async with asyncio.timeout(CLOUD_TIMEOUT_S):
                    outcome, answer = await waiter
            except TimeoutError:
                raise CloudUnavailable(f"no cloud answer to {operation} within {CLOUD_TIMEOUT_S:.0f} s") from None
        finally:
            self._waiting.pop(token, None)
        if outcome == expect:
            return answer
        code = int(answer.get("code", 0))
        if code == 409:
            raise Conflict()
        raise _Rejected(code, str(answer.get("message", "")))

    async def _local_request(self, thing: str, name: str | None, operation: str, body: Json) -> int:
        token = f"{SYNC_TOKEN_PREFIX}{uuid.uuid4().hex}"
        payload = json.dumps({**body, "clientToken": token}).encode()
        outcome = await self.storage.call(self.handler.handle, thing, name, operation, payload)
        for message in outcome.messages:
            await self.send(message)
        if outcome.error is not None:
            if outcome.error.code == 409:
                raise Conflict()
            raise CloudUnavailable(f"local {operation} refused: {outcome.error.code} {outcome.error.message}")
        return outcome.change.version if outcome.change else 0


class _Rejected(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
