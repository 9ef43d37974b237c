"""`millgate pub` and `millgate sub`: the operator's own client on the local broker, with the operator
identity whose secret only someone who can read the state dir can use.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from gateway.acl import OPERATOR
from gateway.credentials import load_credentials
from gateway.mqtt_blocking import MqttError, connect_blocking, paho_client
from gateway.paths import GatewayPaths
from gateway.topics import TopicError, validate_topic_filter, validate_topic_name

PUBLISH_TIMEOUT_S = 10.0


class OperatorError(RuntimeError):
    pass


def connected_operator(paths: GatewayPaths, suffix: str) -> paho.Client:
    try:
        creds = load_credentials(paths.credentials_dir, OPERATOR)
    except PermissionError:
        raise OperatorError(
            f"cannot read the operator credentials under {paths.credentials_dir}: "
            "run as the user that owns the state dir (root on an installed gateway)"
        ) from None
    except FileNotFoundError:
        raise OperatorError(
            f"no operator credentials under {paths.credentials_dir}: has `millgate run` been started with this --state?"
        ) from None
    client = paho_client(creds, f"operator-{suffix}-{time.time_ns() % 10**9}")
    try:
        connect_blocking(client, paths.broker_socket)
    except MqttError as exc:
        raise OperatorError(str(exc)) from None
    return client


def publish_lines(paths: GatewayPaths, topic: str, payloads: Iterable[str], qos: int, retain: bool) -> int:
    """Publish each payload in order and wait for the broker to take each; return how many."""
    try:
        validate_topic_name(topic)
    except TopicError as exc:
        raise OperatorError(f"topic {exc}") from None
    client = connected_operator(paths, "pub")
    failures: list[str] = []

    def on_publish(_c: paho.Client, _u: object, mid: int, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            failures.append(f"message {mid}: {reason}")

    client.on_publish = on_publish
    count = 0
    try:
        for payload in payloads:
            info = client.publish(topic, payload.encode("utf-8"), qos=qos, retain=retain)
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
            if not info.is_published():
                raise OperatorError(
                    f"{topic}: the broker did not take message {count + 1} within {PUBLISH_TIMEOUT_S:.0f} s"
                )
            if failures:
                raise OperatorError(f"{topic}: refused by the broker: {failures[0]}")
            count += 1
    finally:
        client.disconnect()
        client.loop_stop()
    return count


def subscribe_print(paths: GatewayPaths, topic_filter: str, count: int | None, timeout_s: float | None) -> bool:
    """Print `TOPIC PAYLOAD` per message; False only when `count` was given and did not arrive in time.
    Subscribes on every connect: the session ends with each connection, so after the broker restarts
    (paho reconnects by itself) the subscription must be made again. Raises the OSError stdout gave
    (BrokenPipeError: the reader has gone, as with `| head -1`)."""
    try:
        validate_topic_filter(topic_filter)
    except TopicError as exc:
        raise OperatorError(f"filter {exc}") from None
    client = connected_operator(paths, "sub")
    received = 0
    enough = threading.Event()
    refused: list[str] = []
    output_failed: list[OSError] = []

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        nonlocal received
        if enough.is_set():
            return
        payload = message.payload.decode("utf-8", errors="backslashreplace")
        try:
            sys.stdout.write(f"{message.topic} {payload}\n")
            sys.stdout.flush()
        except OSError as exc:  # raised here, it would end paho's network thread and leave us waiting
            output_failed.append(exc)
            enough.set()
            return
        received += 1
        if count is not None and received >= count:
            enough.set()

    def on_subscribe(_c: paho.Client, _u: object, _mid: int, reasons: list, _p: object) -> None:
        refused.extend(str(r) for r in reasons if r.is_failure)
        if refused:
            enough.set()

    def on_connect(_c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            _say(f"the broker refused to reconnect us ({reason}); retrying")
            return
        _say("reconnected to the broker; messages published while it was away were missed")
        client.subscribe(topic_filter, qos=1)

    def on_disconnect(_c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if not enough.is_set():
            _say(f"lost the broker ({reason}); reconnecting")

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = on_connect  # connected_operator's own on_connect has done its job
    client.on_disconnect = on_disconnect
    client.subscribe(topic_filter, qos=1)
    try:
        finished = enough.wait(timeout_s) if timeout_s is not None else enough.wait()
    except KeyboardInterrupt:
        finished = count is None
    finally:
        enough.set()
        client.disconnect()
        client.loop_stop()
    if output_failed:
        raise output_failed[0]
    if refused:
        raise OperatorError(f"subscription to {topic_filter} refused: {refused[0]}")
    return finished or count is None


def _say(what: str) -> None:
    """A note for the operator on stderr, beside the messages on stdout."""
    with contextlib.suppress(OSError, ValueError):  # stderr gone too: nothing left to tell
        print(f"millgate sub: {what}", file=sys.stderr, flush=True)
