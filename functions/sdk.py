"""The SDK that function code imports (`from functions import sdk`): publish, device shadows, invoking
another function, and the function's logger. It talks to the gateway over the local broker with the
worker's own identity, so the broker's whitelist binds everything a function does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.credentials import load_credentials
from gateway.mqtt_blocking import PublishRefused, connect_blocking, paho_client
from gateway.topics import invoke_topic, reply_filter, reply_topic

REQUEST_TIMEOUT_S = 10.0

logger = logging.getLogger(f"function.{os.environ.get('MILLGATE_FUNCTION', 'local')}")


class SdkError(Exception):
    pass


class ShadowRejected(SdkError):
    """The shadow service answered on /rejected: `code` and `message` as AWS IoT sends them."""

    def __init__(self, code: int, message: str, document: dict[str, Any]):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.document = code, message, document


class FunctionError(SdkError):
    """The invoked function raised; `kind` is 'Handled' or 'Unhandled' as Greengrass v1 said."""

    def __init__(self, kind: str, detail: Any):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class _Acks:
    """The broker's acknowledgements (PUBACK, SUBACK) by message id. One callback serves every SDK call,
    from whichever thread (a long-lived function's init loop and its handler call at once); an
    acknowledgement that arrives before its caller starts waiting is kept for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._early: dict[int, Any] = {}
        self._unwanted: set[int] = set()

    def arrived(self, mid: int, outcome: Any) -> None:
        with self._lock:
            if mid in self._unwanted:
                self._unwanted.discard(mid)
                return
            waiter = self._waiting.pop(mid, None)
            if waiter is None:
                self._early[mid] = outcome
                return
        waiter[1].append(outcome)
        waiter[0].set()

    def wait(self, mid: int, timeout_s: float) -> tuple[bool, Any]:
        """(True, the acknowledgement's reason(s)) or (False, None) when none came within `timeout_s`."""
        with self._lock:
            if mid in self._early:
                return True, self._early.pop(mid)
            event, box = threading.Event(), list[Any]()
            self._waiting[mid] = (event, box)
        if event.wait(timeout_s):
            return True, box[0]
        with self._lock:
            if self._waiting.pop(mid, None) is not None:
                self._unwanted.add(mid)  # a late acknowledgement must not answer a later call's id
        return False, None

    def ignore(self, mid: int) -> None:
        """No one waits for this id (a QoS 0 publish): drop its acknowledgement whenever it comes."""
        with self._lock:
            if self._early.pop(mid, None) is None:
                self._unwanted.add(mid)


class _Connection:
    """One lazily opened broker connection per worker process, shared by every SDK call and thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: paho.Client | None = None
        self._waiters: dict[str, tuple[threading.Event, list[paho.MQTTMessage]]] = {}
        self._subscribed: set[str] = set()
        self._acks = _Acks()

    @property
    def function(self) -> str:
        return os.environ["MILLGATE_FUNCTION"]

    def client(self) -> paho.Client:
        with self._lock:
            if self._client is None:
                state = Path(os.environ["MILLGATE_STATE"])
                creds = load_credentials(state / "credentials", f"function.{self.function}")
                client = paho_client(creds, f"fn-{self.function}-{os.getpid()}")
                client.on_message = self._on_message
                client.on_publish = lambda _c, _u, mid, reason, _p: self._acks.arrived(mid, reason)
                client.on_subscribe = lambda _c, _u, mid, reasons, _p: self._acks.arrived(mid, reasons)
                connect_blocking(client, state / "run" / "mqtt.sock")
                self._client = client
            return self._client

    def subscribe(self, topic_filter: str) -> None:
        if topic_filter in self._subscribed:
            return
        result, mid = self.client().subscribe(topic_filter, qos=1)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise SdkError(f"subscribe {topic_filter}: {paho.error_string(result)}")
        acknowledged, reasons = self._acks.wait(mid, REQUEST_TIMEOUT_S)
        refused = [str(r) for r in reasons or [] if r.is_failure]
        if not acknowledged or refused:
            raise SdkError(f"subscribe {topic_filter}: {refused[0] if refused else 'no answer from the broker'}")
        self._subscribed.add(topic_filter)

    def publish(self, topic: str, payload: bytes, qos: int, properties: Properties | None = None) -> None:
        info = self.client().publish(topic, payload, qos=qos, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise SdkError(f"publish {topic}: {paho.error_string(info.rc)}")
        if qos == 0:
            self._acks.ignore(info.mid)
            return
        acknowledged, reason = self._acks.wait(info.mid, REQUEST_TIMEOUT_S)
        if not acknowledged:
            raise SdkError(f"publish {topic}: no acknowledgement in {REQUEST_TIMEOUT_S:.0f} s")
        if reason is not None and reason.is_failure:
            raise PublishRefused(f"{topic}: {reason} (is there a subscription from this function?)")

    def expect(self, key: str) -> threading.Event:
        event = threading.Event()
        self._waiters[key] = (event, [])
        return event

    def take(self, key: str) -> paho.MQTTMessage | None:
        _, found = self._waiters.pop(key, (None, []))
        return found[0] if found else None

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        key = _correlation_key(message)
        waiter = self._waiters.get(key) if key else None
        if waiter is not None:
            waiter[1].append(message)
            waiter[0].set()


def _correlation_key(message: paho.MQTTMessage) -> str | None:
    if message.topic.startswith("$aws/"):
        try:
            token = json.loads(message.payload).get("clientToken")
        except (ValueError, AttributeError):
            return None
        return f"shadow:{token}" if token else None
    return f"invoke:{message.topic}"


_connection = _Connection()


def _encode(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


def publish(topic: str, payload: Any, qos: int = 0) -> None:
    """Publish on the local broker; dict/list payloads are sent as JSON, str as UTF-8."""
    _connection.publish(topic, _encode(payload), qos)


def _shadow_prefix(thing: str, name: str | None) -> str:
    return f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "")


def _shadow_call(thing: str, operation: str, request: dict[str, Any], name: str | None) -> dict[str, Any]:
    topic = f"{_shadow_prefix(thing, name)}/{operation}"
    # the caller's clientToken is AWS's to echo and the caller's to see again; one is made only when absent
    if "clientToken" in request:
        # the shadow rules only for a caller's own token: every worker imports this SDK, few pass one
        from gateway.shadows import document as shadow_document

        try:
            token = shadow_document.client_token(request)
        except shadow_document.ShadowError as exc:  # the service would refuse it without echoing it
            raise ShadowRejected(exc.code, exc.message, shadow_document.error_document(exc, int(time.time()))) from None
        assert token is not None
    else:
        token = uuid.uuid4().hex
        request = {**request, "clientToken": token}
    for outcome in ("accepted", "rejected"):
        _connection.subscribe(f"{topic}/{outcome}")
    arrived = _connection.expect(f"shadow:{token}")
    _connection.publish(topic, json.dumps(request).encode(), qos=1)
    if not arrived.wait(REQUEST_TIMEOUT_S):
        _connection.take(f"shadow:{token}")
        raise SdkError(f"{topic}: no answer from the shadow service in {REQUEST_TIMEOUT_S:.0f} s")
    message = _connection.take(f"shadow:{token}")
    assert message is not None
    answer: dict[str, Any] = json.loads(message.payload)
    if message.topic.endswith("/rejected"):
        raise ShadowRejected(int(answer.get("code", 0)), str(answer.get("message", "")), answer)
    return answer


def _token_only(client_token: str | None) -> dict[str, Any]:
    return {} if client_token is None else {"clientToken": client_token}


def get_thing_shadow(thing: str, name: str | None = None, *, client_token: str | None = None) -> dict[str, Any]:
    """The shadow document (get/accepted), or ShadowRejected with AWS's code and message."""
    return _shadow_call(thing, "get", _token_only(client_token), name)


def update_thing_shadow(thing: str, document: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Apply an update request document (`state`, optional `version` and `clientToken`): the
    update/accepted document, or ShadowRejected (e.g. 409 when `version` is not the current one)."""
    if not isinstance(document, dict):
        raise TypeError(f"update_thing_shadow({thing!r}): document must be a dict, not {type(document).__name__}")
    return _shadow_call(thing, "update", document, name)


def delete_thing_shadow(thing: str, name: str | None = None, *, client_token: str | None = None) -> dict[str, Any]:
    return _shadow_call(thing, "delete", _token_only(client_token), name)


def invoke(function: str, payload: Any = None, wait: bool = True, timeout_s: float = 30.0) -> Any:
    """Invoke another local function: with `wait`, return its result (RequestResponse) or raise
    FunctionError; without, return None once the gateway has taken the request (Event)."""
    me = _connection.function
    properties = Properties(PacketTypes.PUBLISH)
    if wait:
        request_id = uuid.uuid4().hex
        answer_topic = reply_topic(me, request_id)
        _connection.subscribe(reply_filter(me))
        properties.ResponseTopic = answer_topic
        arrived = _connection.expect(f"invoke:{answer_topic}")
    _connection.publish(invoke_topic(function), _encode(payload if payload is not None else {}), 1, properties)
    if not wait:
        return None
    if not arrived.wait(timeout_s):
        _connection.take(f"invoke:{answer_topic}")
        raise SdkError(f"invoke {function}: no result in {timeout_s:.0f} s")
    message = _connection.take(f"invoke:{answer_topic}")
    assert message is not None
    result = json.loads(message.payload)
    if result.get("function_error"):
        raise FunctionError(result["function_error"], result.get("error"))
    return result.get("result")
