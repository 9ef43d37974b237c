"""The uplink's MQTT connection to the cloud (AWS IoT Core or any MQTT 3.1.1/5 broker): TLS with the
thing's certificate, optional ALPN for port 443, reconnect with capped backoff and jitter, a health
state logged once per change, QoS 1 publishes that resolve on PUBACK, and cloud messages handed over.

It does not know the spool: the drain decides what to send, the downlink what to do with what comes in.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.backoff import Backoff, sleep_or_stop
from gateway.config import CloudSection
from gateway.mqtt import settle
from gateway.mqtt_blocking import close_paho
from gateway.uplink.message_properties import publish_properties

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
INBOX_FULL_WAIT_S = 30.0


SUBSCRIBE_BATCH = 8


class LinkDown(Exception):
    """The cloud connection went away; whatever was in flight must be sent again."""


# PUBACK reason codes (MQTT 5.0, 3.4.2.1) for a publish the cloud may well take later: 0x91 packet
# identifier in use, 0x97 quota exceeded (a throttling limit). Every other failure counts toward
# dead_letter_after.
TRANSIENT_PUBACK_CODES = frozenset({0x91, 0x97})


@dataclass(frozen=True)
class CloudMessage:
    topic: str
    payload: bytes
    qos: int
    mid: int
    session: int


@dataclass(frozen=True)
class Ack:
    """A PUBACK: `refused` is None when the cloud took the message, else the reason it gave."""

    mid: int
    refused: str | None
    # the refusal says "not now", not "never" (a quota, a packet id still in use): retried, never buried
    transient: bool = False


AckHandler = Callable[[int, Ack], None]
MessageHandler = Callable[[CloudMessage], Awaitable[None]]


def tls_context(cloud: CloudSection) -> ssl.SSLContext:
    """Verify the endpoint against `ca_file` and present the thing's certificate."""
    try:
        context = ssl.create_default_context(cafile=str(cloud.ca_file))
        context.load_cert_chain(str(cloud.cert_file), str(cloud.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise LinkConfigError(
            f"[cloud] ca_file={cloud.ca_file} cert_file={cloud.cert_file} key_file={cloud.key_file}: "
            f"cannot load: {exc}; check the files exist, are PEM and readable by the uplink"
        ) from exc
    if cloud.alpn:
        context.set_alpn_protocols([cloud.alpn])
    return context


class LinkConfigError(Exception):
    """The cloud settings cannot work (unreadable certificate...); retrying will not help."""


class CloudLink:
    """Keeps one connection to the cloud up until `run`'s stop event is set."""

    def __init__(
        self,
        cloud: CloudSection,
        client_id: str,
        *,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        inbox_size: int = 1000,
    ):
        self.cloud = cloud
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.backoff = Backoff(initial_s=cloud.reconnect_initial_s, cap_s=cloud.reconnect_max_s)
        self.state = "disconnected"
        self.reason: str | None = "not connected yet"
        self.session = 0
        self.connected_event = asyncio.Event()
        self.lost_event = asyncio.Event()
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ack_handler: AckHandler | None = None
        self._inbox: asyncio.Queue[CloudMessage] = asyncio.Queue(maxsize=inbox_size)
        self._outage_reasons: set[str | None] = set()
        self._acks: list[tuple[int, Ack]] = []
        self._acks_lock = threading.Lock()
        self._acks_scheduled = False
        self._suback: asyncio.Future[list[ReasonCode]] | None = None
        self._dropped_properties = False

    # ---- what the drain and the downlink use ----------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def on_ack(self, handler: AckHandler) -> None:
        """`handler(session, ack)` runs on the event loop for every PUBACK."""
        self._ack_handler = handler

    def publish(self, topic: str, payload: bytes, properties: dict[str, Any] | None = None) -> int:
        """Queue a QoS 1 publish on the current connection; returns its mid (see `on_ack`).
        `properties` (gateway.uplink.message_properties) go along on MQTT 5; MQTT 3.1.1 has no
        properties, so there they are dropped (logged once)."""
        client = self._client
        if client is None or not self.connected:
            raise LinkDown("not connected")
        sent = None
        if properties and self.cloud.protocol == "5":
            sent = publish_properties(properties, time.time())
        elif properties and not self._dropped_properties:
            self._dropped_properties = True
            log.warning(
                "event=cloud-properties-dropped protocol=3.1.1 topic=%s properties=%s reason=MQTT 3.1.1 has no "
                'message properties; set [cloud] protocol = "5" to forward them',
                topic,
                ",".join(sorted(properties)),
            )
        info = client.publish(topic, payload, qos=1, properties=sent)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise LinkDown(f"publish to {topic}: {paho.error_string(info.rc)}")
        return info.mid

    def ack(self, message: CloudMessage) -> None:
        """Acknowledge a cloud message once it is delivered locally; stale sessions re-deliver anyway."""
        client = self._client
        if client is not None and message.qos > 0 and message.session == self.session:
            client.ack(message.mid, message.qos)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            dispatcher = tasks.create_task(self._dispatch())
            while not stop.is_set():
                try:
                    await self._session(stop)
                except (LinkDown, OSError, ssl.SSLError, TimeoutError) as exc:
                    self._set_state("disconnected", _describe(exc))
                if stop.is_set():
                    break
                await sleep_or_stop(stop, self.backoff.next_delay())
            dispatcher.cancel()

    # ---- one connection ---------------------------------------------------------------------

    async def _session(self, stop: asyncio.Event) -> None:
        client, lost = await self._connect()
        self.session += 1
        self._client = client
        self.lost_event.clear()
        try:
            await self._subscribe(client)
            self.backoff.reset()
            self._set_state("connected", None)
            self.connected_event.set()
            stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            await asyncio.wait([lost, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if lost.done():
                raise LinkDown(lost.result())
        finally:
            self.connected_event.clear()
            self.lost_event.set()
            self._client = None
            await asyncio.to_thread(close_paho, client)

    async def _connect(self) -> tuple[paho.Client, asyncio.Future[str]]:
        loop = asyncio.get_running_loop()
        connack: asyncio.Future[ReasonCode] = loop.create_future()
        lost: asyncio.Future[str] = loop.create_future()
        cloud = self.cloud
        v5 = cloud.protocol == "5"
        persistent = bool(self.subscriptions)  # the cloud keeps our subscriptions and queues for us
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        try:  # loaded on every attempt: certificates put in place (or renewed) later are picked up
            client.tls_set_context(tls_context(cloud))
        except LinkConfigError as exc:
            raise LinkDown(str(exc)) from None
        client.connect_timeout = cloud.connect_timeout_s
        client.max_inflight_messages_set(cloud.inflight_window)
        client.max_queued_messages_set(0)
        client.manual_ack_set(True)
        session = self.session + 1

        def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            loop.call_soon_threadsafe(settle, connack, reason)

        def on_disconnect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            loop.call_soon_threadsafe(settle, lost, f"connection lost: {reason}")

        def on_publish(_c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            # one loop wake-up per burst of PUBACKs, not one per message
            with self._acks_lock:
                refused = str(reason) if reason.is_failure else None
                self._acks.append((session, Ack(mid, refused, transient=reason.value in TRANSIENT_PUBACK_CODES)))
                wake, self._acks_scheduled = not self._acks_scheduled, True
            if wake:
                loop.call_soon_threadsafe(self._deliver_acks)

        def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
            received = CloudMessage(message.topic, bytes(message.payload), message.qos, message.mid, session)
            # blocking paho's thread while the inbox is full makes the cloud hold further messages
            waiter = asyncio.run_coroutine_threadsafe(self._inbox.put(received), loop)
            try:
                waiter.result(INBOX_FULL_WAIT_S)
            except TimeoutError:
                waiter.cancel()
                log.error("event=cloud-inbox-full topic=%s action=not-acknowledged-cloud-resends", message.topic)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        client.on_subscribe = self._on_subscribe
        where = f"{cloud.endpoint}:{cloud.port}"
        self._set_state("connecting", self.reason)
        connect = partial(client.connect, cloud.endpoint, cloud.port, keepalive=cloud.keepalive_s)
        if v5:
            properties = None
            if persistent:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = SESSION_EXPIRY_S
            connect = partial(connect, clean_start=not persistent, properties=properties)
        try:
            async with asyncio.timeout(cloud.connect_timeout_s + 1):
                await asyncio.to_thread(connect)
        except ssl.SSLError as exc:
            raise LinkDown(f"{where}: TLS failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise LinkDown(f"{where}: {exc.strerror or exc}") from None
        except TimeoutError:
            raise LinkDown(f"{where}: no TCP/TLS connection within {cloud.connect_timeout_s:.0f} s") from None
        client.loop_start()
        try:
            async with asyncio.timeout(cloud.connect_timeout_s):
                reason = await connack
        except TimeoutError:
            await asyncio.to_thread(close_paho, client)
            raise LinkDown(f"{where}: no CONNACK within {cloud.connect_timeout_s:.0f} s") from None
        if reason.is_failure:
            await asyncio.to_thread(close_paho, client)
            raise LinkDown(f"{where} refused the connection as {self.client_id!r}: {reason}")
        return client, lost

    async def _subscribe(self, client: paho.Client) -> None:
        if not self.subscriptions:
            return
        loop = asyncio.get_running_loop()
        reasons: list[ReasonCode] = []
        # AWS IoT takes at most 8 topic filters in one SUBSCRIBE
        for start in range(0, len(self.subscriptions), SUBSCRIBE_BATCH):
            batch = self.subscriptions[start : start + SUBSCRIBE_BATCH]
            self._suback = suback = loop.create_future()
            # noLocal: the cloud does not send back what the uplink itself published. MQTT 3.1.1 has no
            # subscription options (paho refuses them there: "Invalid QoS level"), only the QoS
            options: list[tuple[str, Any]] = (
                [(f, SubscribeOptions(qos=1, noLocal=True)) for f in batch]
                if self.cloud.protocol == "5"
                else [(f, 1) for f in batch]
            )
            result, _mid = client.subscribe(options)
            if result != paho.MQTT_ERR_SUCCESS:
                raise LinkDown(f"subscribe: {paho.error_string(result)}")
            try:
                async with asyncio.timeout(self.cloud.connect_timeout_s):
                    reasons += await suback
            except TimeoutError:
                raise LinkDown(f"no SUBACK within {self.cloud.connect_timeout_s:.0f} s") from None
        refused = [f"{f} ({r})" for f, r in zip(self.subscriptions, reasons, strict=False) if r.is_failure]
        if refused:
            # keep the link for uplink traffic; the refused filters are a policy problem in the cloud
            log.error(
                "event=cloud-subscription-refused filters=%s action=check-the-thing-policy-in-the-cloud",
                ",".join(refused),
            )

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        if self._loop is not None and self._suback is not None:
            self._loop.call_soon_threadsafe(settle, self._suback, reasons)

    def _deliver_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks, self._acks_scheduled = self._acks, [], False
        if self._ack_handler is not None:
            for session, ack in acks:
                self._ack_handler(session, ack)

    async def _dispatch(self) -> None:
        while True:
            message = await self._inbox.get()
            if self.on_message is None:
                continue
            try:
                await self.on_message(message)
            except Exception:
                log.exception("event=cloud-message-handler-failed topic=%s", message.topic)

    def _set_state(self, state: str, reason: str | None) -> None:
        """Log a change of state once, and each distinct reason once per outage (a flapping line
        alternates between a few reasons; a line per retry would drown the log)."""
        previous, self.state = self.state, state
        if state == "connecting":
            return
        self.reason = reason
        where = f"{self.cloud.endpoint}:{self.cloud.port}"
        if state == "connected":
            self._outage_reasons.clear()
            if previous != "connected":
                log.info("event=cloud-connected endpoint=%s client_id=%s", where, self.client_id)
            return
        if reason in self._outage_reasons:
            return
        self._outage_reasons.add(reason)
        log.warning(
            "event=cloud-%s endpoint=%s reason=%s retry=backoff-up-to-%gs",
            state,
            where,
            reason,
            self.cloud.reconnect_max_s,
        )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
