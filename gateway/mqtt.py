"""The one MQTT client wrapper every component uses to reach the local broker: its own identity over
the broker's unix socket, MQTT 5 (so an ACL denial comes back as a reason code, not silence),
reconnect with capped backoff, a retained status heartbeat, a bounded inbox, and clean shutdown.

paho-mqtt does the protocol; this module only bridges it to asyncio and keeps the connection alive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.backoff import Backoff, sleep_or_stop
from gateway.credentials import Credentials

# The refusals are defined beside the blocking helpers and are this client's too (LocalMqtt raises
# them), so components that use LocalMqtt import them from here.
from gateway.mqtt_blocking import CONNECT_TIMEOUT_S, KEEPALIVE_S, close_paho, paho_client
from gateway.mqtt_blocking import ConnectRefused as ConnectRefused
from gateway.mqtt_blocking import MqttError as MqttError
from gateway.mqtt_blocking import NotConnected as NotConnected
from gateway.mqtt_blocking import PublishRefused as PublishRefused
from gateway.mqtt_blocking import SubscribeRefused as SubscribeRefused
from gateway.topics import status_topic

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600


class PacketTooLarge(PublishRefused):
    """A payload over the broker's Maximum Packet Size: sent anyway, the broker would drop the connection
    (MQTT 5.0 section 3.2.2.3.6), so it is refused before sending."""

    def __init__(self, topic: str, payload_bytes: int, limit_bytes: int):
        super().__init__(
            f"{topic}: a payload of {payload_bytes} bytes is over the broker's limit of {limit_bytes} bytes"
        )
        self.payload_bytes = payload_bytes
        self.limit_bytes = limit_bytes  # the largest payload that fits a packet on this topic


def publish_overhead(topic: str, payload_bytes: int, qos: int) -> int:
    """Bytes of a PUBLISH packet besides its payload, as paho sends it (no properties)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + payload_bytes
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining - payload_bytes


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int = 0
    session: int = 0  # which connection delivered it; an ack on a later one is meaningless
    response_topic: str | None = None  # MQTT 5: where the sender wants an answer
    properties: Properties | None = None  # every MQTT 5 property the message carried


MessageHandler = Callable[[Received], Awaitable[None]]


class LocalMqtt:
    """One component's connection to the local broker, kept up until `run`'s stop event is set."""

    def __init__(
        self,
        socket_path: Path,
        creds: Credentials,
        component: str,
        *,
        status_interval_s: float = 5.0,
        subscriptions: Sequence[tuple[str, int | SubscribeOptions]] = (),
        on_message: MessageHandler | None = None,
        status_fields: Callable[[], dict[str, Any]] | None = None,
        inbox_size: int = 10_000,
        inbox_max_bytes: int = 16 * 1024 * 1024,
        backoff: Backoff | None = None,
        manual_ack: bool = False,
        persistent_session: bool = False,
    ):
        """With `manual_ack`, a QoS 1 message is acknowledged to the broker only when `ack` is called
        (after the handler made it durable), and the inbox holds at most `inbox_max_bytes` of such
        messages' payloads: beyond that, paho stops reading the socket until the handler catches up,
        and the broker keeps the rest. With `persistent_session`, the broker keeps this component's
        subscriptions and queues its QoS 1 messages while it is away."""
        self.socket_path = socket_path
        self.creds = creds
        self.component = component
        self.status_interval_s = status_interval_s
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.status_fields = status_fields
        self.backoff = backoff or Backoff(initial_s=0.05, cap_s=10.0)
        self.state = "starting"
        self.last_error: str | None = None
        self.dropped_inbound = 0
        self.started_at = time.time()
        self.max_packet_size: int | None = None  # the broker's, from its CONNACK
        # A manual_ack consumer's QoS 1 messages are never dropped here. Receive Maximum should bound
        # them, but mosquitto 2.0.11 stops holding to it once acknowledgements interleave (measured:
        # 18,408 unacknowledged against 50), so their payload bytes are capped instead, by making
        # paho's network thread wait for room (see _wait_for_room); QoS 0 ones are counted and dropped
        # beyond inbox_size.
        self._inbox_size = inbox_size
        self._inbox: asyncio.Queue[Received] = asyncio.Queue()
        self.inbox_max_bytes = inbox_max_bytes
        self._held_bytes = 0  # payload bytes of manual_ack QoS 1 messages in the inbox
        self._room = threading.Condition()
        self._closing = False  # the connection is being closed: a waiting reader gives up
        self.reader_pauses = 0  # times paho's reader waited for room: the inbox's overflow, visible
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.RLock()
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._early: dict[int, ReasonCode] = {}
        self._lost: asyncio.Future[str] | None = None
        self.manual_ack = manual_ack
        self.persistent_session = persistent_session
        self._session_number = 0

    # ---- public API -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout_s: float = 10.0
    ) -> None:
        """Publish and, for QoS 1/2, wait for the broker's acknowledgement; raise if it refused."""
        client, loop = self._client, self._loop
        if client is None or loop is None or not self.connected:
            raise NotConnected(f"{self.component}: not connected to the local broker")
        if self.max_packet_size is not None:
            size = len(payload.encode() if isinstance(payload, str) else payload)
            overhead = publish_overhead(topic, size, qos)
            if size + overhead > self.max_packet_size:
                raise PacketTooLarge(topic, size, self.max_packet_size - overhead)
        future: asyncio.Future[ReasonCode] = loop.create_future()
        # Never hold self._lock while calling into paho: paho runs on_publish with its own mutex held
        # and on_publish takes self._lock, so holding both in the other order would deadlock.
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise NotConnected(f"{self.component}: publish to {topic}: {paho.error_string(info.rc)}")
        self._await_outcome(info.mid, future)
        if qos == 0:
            future.add_done_callback(_consume)
            return
        async with asyncio.timeout(timeout_s):
            reason = await future
        if reason.is_failure:
            raise PublishRefused(f"{topic}: {reason}")

    def ack(self, received: Received) -> None:
        """Acknowledge a message taken with `manual_ack`; a no-op if its connection is gone (the broker
        will deliver it again on the next one)."""
        client = self._client
        if not self.manual_ack or received.qos == 0 or client is None or received.session != self._session_number:
            return
        client.ack(received.mid, received.qos)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stay connected, reconnect with backoff; on `stop`, go offline cleanly and return."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            dispatcher = tasks.create_task(self._dispatch())
            while not stop.is_set():
                try:
                    await self._session(stop)
                except (MqttError, OSError, TimeoutError) as exc:
                    self._set_state("disconnected", str(exc) or type(exc).__name__)
                if stop.is_set():
                    break
                await sleep_or_stop(stop, self.backoff.next_delay())
            dispatcher.cancel()

    # ---- one connection ---------------------------------------------------------------------

    async def _session(self, stop: asyncio.Event) -> None:
        client = await self._connect()
        lost = self._lost
        assert lost is not None
        try:
            self._set_state("connected", None)
            await self._subscribe(client)
            self.backoff.reset()  # only a fully set-up session counts as success
            heartbeat = asyncio.create_task(self._heartbeat())
            stopped = asyncio.create_task(stop.wait())
            waiting: set[asyncio.Future[Any]] = {lost, stopped, heartbeat}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            heartbeat.cancel()
            stopped.cancel()
            failure = heartbeat.exception() if heartbeat in done else None
            if failure is not None:
                raise failure
            if lost.done():
                raise NotConnected(f"connection lost: {lost.result()}")
            await self._go_offline()
        finally:
            self._client = None
            self._fail_pending("connection closed")
            self._set_closing(True)
            await asyncio.to_thread(close_paho, client)

    async def _connect(self) -> paho.Client:
        loop = asyncio.get_running_loop()
        connack: asyncio.Future[ReasonCode] = loop.create_future()
        self._lost = loop.create_future()
        will = (status_topic(self.component), self._status_payload("offline", reason="connection lost"))
        client = paho_client(self.creds, self.component, will)
        client.manual_ack_set(self.manual_ack)
        self._session_number += 1
        self._set_closing(False)

        def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, properties: Any) -> None:
            self.max_packet_size = getattr(properties, "MaximumPacketSize", None)
            loop.call_soon_threadsafe(settle, connack, reason)

        def on_disconnect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            assert self._lost is not None
            loop.call_soon_threadsafe(settle, self._lost, str(reason))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        try:
            properties = Properties(PacketTypes.CONNECT)
            if self.persistent_session:
                properties.SessionExpiryInterval = SESSION_EXPIRY_S
            if self.manual_ack:
                properties.ReceiveMaximum = min(self._inbox_size, 65535)
            await asyncio.to_thread(
                partial(
                    client.connect,
                    str(self.socket_path),
                    keepalive=KEEPALIVE_S,
                    clean_start=not self.persistent_session,
                    properties=properties,
                )
            )
        except OSError as exc:
            raise NotConnected(f"broker socket {self.socket_path}: {exc.strerror or exc}") from exc
        client.loop_start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reason = await connack
        except TimeoutError:
            await asyncio.to_thread(close_paho, client)
            raise NotConnected(f"no CONNACK from {self.socket_path} within {CONNECT_TIMEOUT_S:.0f} s") from None
        if reason.is_failure:
            await asyncio.to_thread(close_paho, client)
            raise ConnectRefused(f"broker refused {self.creds.username!r}: {reason}")
        self._client = client
        return client

    async def _subscribe(self, client: paho.Client) -> None:
        if not self.subscriptions:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[ReasonCode]] = loop.create_future()
        result, mid = client.subscribe(
            [(f, q if isinstance(q, SubscribeOptions) else SubscribeOptions(qos=q)) for f, q in self.subscriptions]
        )
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise NotConnected(f"subscribe: {paho.error_string(result)}")
        self._await_outcome(mid, future)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reasons = await future
        refused = [f"{f} ({r})" for (f, _), r in zip(self.subscriptions, reasons, strict=False) if r.is_failure]
        if refused:
            raise SubscribeRefused(f"{self.component}: subscription refused: {', '.join(refused)}")

    async def _heartbeat(self) -> None:
        while True:
            await self.publish(status_topic(self.component), self._status_payload("online"), qos=1, retain=True)
            await asyncio.sleep(self.status_interval_s)

    async def _go_offline(self) -> None:
        try:
            await self.publish(
                status_topic(self.component),
                self._status_payload("offline", reason="stopped"),
                qos=1,
                retain=True,
                timeout_s=1.0,
            )
        except (MqttError, TimeoutError) as exc:
            log.warning("component=%s event=offline-status-not-sent reason=%s", self.component, exc)

    def _status_payload(self, state: str, **extra: Any) -> bytes:
        now = time.time()
        status: dict[str, Any] = {
            "component": self.component,
            "state": state,
            "pid": os.getpid(),
            "started_at": round(self.started_at, 3),
            "uptime_s": round(now - self.started_at, 3),
            "ts": round(now, 3),
            **extra,
        }
        if state == "online" and self.status_fields is not None:
            status.update(self.status_fields())
        if self.dropped_inbound:
            status["dropped_inbound"] = self.dropped_inbound
        if self.reader_pauses:
            status["inbox_reader_pauses"] = self.reader_pauses
        return json.dumps(status).encode()

    # ---- paho callbacks (paho's network thread) ---------------------------------------------

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None) -> None:
        self._resolve(mid, reason)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        self._resolve(mid, reasons)

    def _await_outcome(self, mid: int, future: asyncio.Future[Any]) -> None:
        """Tie `future` to the acknowledgement of `mid`, which may already have arrived."""
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._pending[mid] = future
        if early is not None:
            future.set_result(early)

    def _resolve(self, mid: int, outcome: Any) -> None:
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early[mid] = outcome
                return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(settle, future, outcome)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        received = Received(
            message.topic,
            bytes(message.payload),
            message.qos,
            message.retain,
            message.mid,
            self._session_number,
            getattr(message.properties, "ResponseTopic", None),
            message.properties,
        )
        assert self._loop is not None
        if self.manual_ack and received.qos > 0 and not self._wait_for_room(len(received.payload)):
            return  # the connection is closing: unacknowledged, the broker sends it again
        self._loop.call_soon_threadsafe(self._enqueue, received)

    def _wait_for_room(self, size: int) -> bool:
        """On paho's network thread: hold the reader (and so the socket: TCP pushes back on the broker,
        which keeps the messages) until the inbox has room for `size` more bytes; always room for one
        message. The wait never needs paho: the event loop frees room by taking messages off the
        inbox, whatever paho is doing. False if the connection started closing meanwhile."""
        with self._room:
            if self._held_bytes and self._held_bytes + size > self.inbox_max_bytes:
                self.reader_pauses += 1
                if self.reader_pauses == 1 or self.reader_pauses % 1000 == 0:
                    log.warning(
                        "component=%s event=inbox-full-reading-paused held_bytes=%d pauses=%d",
                        self.component,
                        self._held_bytes,
                        self.reader_pauses,
                    )
            while self._held_bytes and self._held_bytes + size > self.inbox_max_bytes:
                if self._closing:
                    return False
                self._room.wait(0.2)
            self._held_bytes += size
            return True

    def _release_room(self, received: Received) -> None:
        if self.manual_ack and received.qos > 0:
            with self._room:
                self._held_bytes -= len(received.payload)
                self._room.notify_all()

    def _set_closing(self, closing: bool) -> None:
        with self._room:
            self._closing = closing
            self._room.notify_all()

    def _enqueue(self, received: Received) -> None:
        held_by_broker = self.manual_ack and received.qos > 0  # unacknowledged: bounded, never dropped
        if held_by_broker or self._inbox.qsize() < self._inbox_size:
            self._inbox.put_nowait(received)
        else:
            self.dropped_inbound += 1
            if self.dropped_inbound == 1 or self.dropped_inbound % 1000 == 0:
                log.error(
                    "component=%s event=inbox-full dropped=%d topic=%s",
                    self.component,
                    self.dropped_inbound,
                    received.topic,
                )

    # ---- helpers ------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            received = await self._inbox.get()
            self._release_room(received)
            if self.on_message is None:
                continue
            try:
                await self.on_message(received)
            except Exception:
                log.exception("component=%s event=handler-failed topic=%s", self.component, received.topic)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(NotConnected(reason))

    def _set_state(self, state: str, error: str | None) -> None:
        if state != self.state or error != self.last_error:
            if state == "connected":
                log.info("component=%s event=broker-connected socket=%s", self.component, self.socket_path)
            else:
                log.warning("component=%s event=broker-%s reason=%s", self.component, state, error)
        self.state, self.last_error = state, error


def settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Resolve `future` once (answers from paho's thread may race a timeout); later outcomes are dropped."""
    if not future.done():
        future.set_result(outcome)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
