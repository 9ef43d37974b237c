"""The local broker's paho client without asyncio: its set-up (MQTT 5 over the unix socket, one
identity), a blocking connect and close, and the refusals every client raises. CLIs, tests and function
workers use it directly; `gateway/mqtt.py` builds the asyncio client on it.

It must not import asyncio: a function worker is a fresh interpreter, and whatever it imports is its own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from gateway.credentials import Credentials

KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 5.0


class MqttError(Exception):
    """Base for the local broker's refusals and outages."""


class NotConnected(MqttError):
    pass


class ConnectRefused(MqttError):
    """The broker answered CONNACK with a failure (bad credentials, not authorised...)."""


class PublishRefused(MqttError):
    """The broker answered PUBACK with a failure, most often 0x87 Not authorized (the ACL)."""


class SubscribeRefused(MqttError):
    pass


def paho_client(creds: Credentials, client_id: str, will: tuple[str, bytes] | None = None) -> paho.Client:
    """A paho client set up for the local broker: MQTT 5 over the unix socket, this identity."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, transport="unix")
    client.username_pw_set(creds.username, creds.password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def connect_blocking(client: paho.Client, socket_path: Path, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect a paho client synchronously (CLI, workers) and start its network thread."""
    done = threading.Event()
    outcome: list[ReasonCode] = []

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        outcome.append(reason)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(str(socket_path), keepalive=KEEPALIVE_S)
    except OSError as exc:
        raise NotConnected(f"broker at {socket_path}: {exc.strerror or exc}") from exc
    client.loop_start()
    if not done.wait(timeout_s):
        client.loop_stop()
        raise NotConnected(f"broker at {socket_path}: no CONNACK within {timeout_s:.0f} s")
    if outcome[0].is_failure:
        client.loop_stop()
        raise ConnectRefused(f"broker at {socket_path} refused {client._username!r}: {outcome[0]}")


def close_paho(client: paho.Client) -> None:
    """Disconnect a paho client and stop its network thread (blocking: in async code, call it in a thread)."""
    client.disconnect()
    client.loop_stop()
