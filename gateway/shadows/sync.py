"""Keeps configured local shadows and their AWS IoT cloud copies in step, through the uplink: it asks
the uplink to publish shadow requests in the cloud and reads the cloud's answers the uplink hands back
(topics and the uplink-side contract in `gateway/topics.py`, shadow-sync section).

Reconciliation rule (the same after an outage as live): a three-way merge against the last state both
sides agreed on (the *base*, kept in shadows.db). A field changed on one side only takes that side's
value; a field changed differently on both sides is a conflict, won by the section's owner: `reported`
by the local side (the plant reports), `desired` by the cloud (the fleet decides). With one-way sync the
source side wins every conflict and only the other side is written. Every write carries the `version`
the merge was computed from (for a shadow not there yet, the version a new one starts from, as the
handler enforces), so a concurrent change makes it fail (409) and the merge is redone; a local delete is
version-checked the same way. Re-running a finished merge changes nothing, so no change is lost or
applied twice. The one unguarded write: creating a cloud shadow the cloud refused to create at the
version we knew (deleted by someone else, so its tombstone's version is unknown here). Timestamps are
not compared: the gateway's clock and AWS's are not the same clock. A sync that fails for a reason that
can pass (no answer, throttling, a server error, a shadow that kept changing) is retried with capped
backoff while the link is up; only a permanent refusal (a 4xx other than 409 and 429) waits for the
next change. Cloud changes relayed while the core is away from the broker are lost (its session is not
persistent), so every synced shadow is reconciled again when its connection comes back.

It never touches the cloud link itself and never writes shadows.db except through the handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.backoff import Backoff
from gateway.config import ShadowSync
from gateway.mqtt import Received
from gateway.shadows import document as doc
from gateway.shadows.document import Json
from gateway.shadows.handler import Change, Outgoing, ShadowHandler
from gateway.shadows.reconcile import reconcile, state_patch
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
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 60.0

# ---- the engine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudShadow:
    state: Json
    version: int


class CloudUnavailable(Exception):
    pass


class Conflict(Exception):
    """One side changed while the merge was being applied; merge again."""


class CloudCreateConflict(Conflict):
    """The cloud refused to create a shadow at the version it was expected to start from."""


class StillConflicting(Exception):
    """Every merge attempt in a row met a concurrent change; merge again later."""


class _Rejected(Exception):
    """A side refused a sync request with an AWS error document."""

    def __init__(self, side: str, operation: str, code: int, message: str):
        super().__init__(f"{side} {operation} refused: {code} {message}")
        self.code = code
        self.message = message

    @property
    def permanent(self) -> bool:
        """The same request would be refused again: a client error other than a conflict or throttling.
        (409 never gets here: it is a Conflict and the merge is redone.)"""
        return 400 <= self.code < 500 and self.code not in (409, 429)


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
        # this engine's own requests: another gateway syncing the same cloud shadow is not "us"
        self._token_prefix = f"{SYNC_TOKEN_PREFIX}{uuid.uuid4().hex[:12]}-"
        self._backoff: dict[Key, Backoff] = {}  # shadows whose last sync failed and will be retried
        self._retry_timers: dict[Key, asyncio.TimerHandle] = {}

    @property
    def filters(self) -> list[str]:
        return [SHADOW_SYNC_DOWN_FILTER]

    # ---- inputs ---------------------------------------------------------------------------------

    async def on_local_change(self, change: Change) -> None:
        key = (change.thing, change.name)
        direction = self.direction.get(key)
        if direction in ("both", "local-to-cloud") and not self._ours(change.client_token):
            self._schedule(key)

    def _ours(self, token: object) -> bool:
        return isinstance(token, str) and token.startswith(self._token_prefix)

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
            answer = doc.read_json(received.payload)
        except doc.ShadowError:
            return
        if parsed is None or not isinstance(answer, dict):
            return
        thing, name, operation = parsed
        token = answer.get("clientToken")
        waiter = self._waiting.get(token) if isinstance(token, str) else None
        # `/update/documents` echoes the token too, and may come first: only the answer completes a wait
        if waiter is not None and not waiter.done() and outcome in ("accepted", "rejected"):
            waiter.set_result((f"{operation}/{outcome}", answer))
            return
        if (
            not self._ours(token)
            and (thing, name) in self.direction
            and (operation, outcome)
            in (
                ("update", "documents"),
                ("delete", "accepted"),
            )
        ):
            self._schedule((thing, name))

    def on_broker_reconnected(self) -> None:
        """The core's broker connection is back: what the uplink relayed meanwhile never arrived (no
        persistent session), so every synced shadow is reconciled again and answers awaited are lost."""
        self._fail_waiters("the core's broker connection was lost; answers relayed meanwhile are gone")
        if self.connected:
            log.info("event=shadow-sync-broker-reconnected shadows=%d", len(self.direction))
            for key in self.direction:
                self._schedule(key)

    def _fail_waiters(self, reason: str) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(CloudUnavailable(reason))

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
            self._cancel_retries()  # a new session starts every shadow afresh
            self._backoff.clear()
            for key in self.direction:
                self._schedule(key)
        elif not connected and was:
            self.state = "waiting-for-cloud"
            log.info("event=shadow-sync-cloud-down")
            self._cancel_retries()  # the link's return reconciles every shadow
            self._fail_waiters("the uplink's cloud link went down")

    def _schedule(self, key: Key) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    # ---- the loop -------------------------------------------------------------------------------

    def _cancel_retries(self) -> None:
        for timer in self._retry_timers.values():
            timer.cancel()
        self._retry_timers.clear()

    async def run(self) -> None:
        try:
            while True:
                key = await self._queue.get()
                self._queued.discard(key)
                if not self.connected:
                    continue  # the link's return schedules every shadow again
                await self._sync_logged(key)
        finally:
            self._cancel_retries()

    async def _sync_logged(self, key: Key) -> None:
        thing, shadow = key[0], key[1] or "classic"
        timer = self._retry_timers.pop(key, None)
        if timer is not None:
            timer.cancel()  # this run is the retry, or makes it pointless
        try:
            await self._sync(key)
        except CloudUnavailable as exc:
            self.state = "waiting-for-cloud"
            self._retry_later(key, str(exc))
        except StillConflicting:
            self.state = "conflicting"
            self._retry_later(key, f"the shadow kept changing during {MAX_ATTEMPTS} merge attempts in a row")
        except _Rejected as exc:
            if not exc.permanent:
                self.state = "waiting-for-cloud"
                self._retry_later(key, str(exc))
                return
            self.state = "refused"
            self._backoff.pop(key, None)
            log.error(
                "event=shadow-sync-refused thing=%s shadow=%s reason=%r action=not retried until the shadow "
                "changes again or the link reconnects",
                thing,
                shadow,
                str(exc),
            )
        except Exception as exc:
            self.state = "failed"
            if key not in self._backoff:
                log.exception("event=shadow-sync-failed thing=%s shadow=%s", thing, shadow)
            self._retry_later(key, f"{type(exc).__name__}: {exc}")
        else:
            backoff = self._backoff.pop(key, None)
            if backoff is not None:
                log.info("event=shadow-sync-recovered thing=%s shadow=%s retries=%d", thing, shadow, backoff.attempts)

    def _retry_later(self, key: Key, reason: str) -> None:
        """Sync `key` again after a capped, jittered backoff; logged once per failing streak."""
        backoff = self._backoff.get(key)
        first = backoff is None
        if backoff is None:
            backoff = self._backoff[key] = Backoff(initial_s=RETRY_INITIAL_S, cap_s=RETRY_MAX_S)
        delay = backoff.next_delay()
        (log.warning if first else log.debug)(
            "event=shadow-sync-retrying thing=%s shadow=%s reason=%r retry_in_s=%.1f",
            key[0],
            key[1] or "classic",
            reason,
            delay,
        )
        self._retry_timers[key] = asyncio.get_running_loop().call_later(delay, self._schedule, key)

    async def _sync(self, key: Key) -> None:
        create_unguarded = False
        for _ in range(MAX_ATTEMPTS):
            try:
                await self._sync_once(key, create_unguarded)
            except CloudCreateConflict:
                create_unguarded = True  # if the cloud still has no shadow on the next attempt
                continue
            except Conflict:
                continue
            self.synced_total += 1
            self.state = "in-sync"
            return
        raise StillConflicting()

    async def _sync_once(self, key: Key, create_unguarded: bool = False) -> None:
        thing, name = key
        direction = self.direction[key]
        base = await self.storage.call(self.handler.store.sync_base, thing, name or "")
        local_row, local_write_version = await self.storage.call(self.handler.current, thing, name)
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
                await self._local_request(thing, name, "delete", {}, expected_version=local_row.version)
                # the last cloud version seen: where a re-created cloud shadow is expected to start
                await self._save(thing, name, None, local_row.version, base.cloud_version)
                return

        merged = reconcile(base_state, local, cloud.state if cloud else None, direction)
        if pushes_up and (cloud is None or not doc.same_value(cloud.state, merged)) and (merged or cloud):
            request: Json = {"state": self._patch(cloud.state if cloud else {}, merged)}
            guarded_create = cloud is None and not create_unguarded
            if cloud is not None:
                request["version"] = cloud.version
            elif guarded_create:
                request["version"] = base.cloud_version if base is not None else 0
            else:
                log.info("event=shadow-sync-cloud-create-unguarded thing=%s name=%s", thing, name)
            try:
                answer = await self._cloud_request(thing, name, "update", request, "update/accepted")
            except (Conflict, _Rejected) as exc:
                if not guarded_create or (isinstance(exc, _Rejected) and exc.code != 404):
                    raise
                raise CloudCreateConflict() from exc
            cloud_version = int(answer["version"])
        if pulls_down and (local is None or not doc.same_value(local, merged)) and (merged or local):
            request = {"state": self._patch(local or {}, merged), "version": local_write_version}
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
            raise
        state = {s: answer["state"][s] for s in doc.SECTIONS if s in answer.get("state", {})}
        return CloudShadow(state, int(answer["version"]))

    def _new_token(self) -> str:
        return f"{self._token_prefix}{uuid.uuid4().hex}"

    async def _cloud_request(self, thing: str, name: str | None, operation: str, body: Json, expect: str) -> Json:
        token = self._new_token()
        waiter: asyncio.Future[tuple[str, Json]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = waiter
        try:
            payload = json.dumps({**body, "clientToken": token}, allow_nan=False).encode()
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
        raise _Rejected("cloud", operation, code, str(answer.get("message", "")))

    async def _local_request(
        self, thing: str, name: str | None, operation: str, body: Json, expected_version: int | None = None
    ) -> int:
        payload = json.dumps({**body, "clientToken": self._new_token()}, allow_nan=False).encode()
        outcome = await self.storage.call(
            self.handler.handle, thing, name, operation, payload, expected_version=expected_version
        )
        for message in outcome.messages:
            await self.send(message)
        if outcome.error is not None:
            if outcome.error.code == 409:
                raise Conflict()
            raise _Rejected("local", operation, outcome.error.code, outcome.error.message)
        return outcome.change.version if outcome.change else 0
