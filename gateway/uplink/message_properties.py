"""The MQTT 5 properties of a cloud-bound message that are worth carrying to the cloud, as the plain
dict the spool stores (JSON), and back to paho's Properties when the cloud link publishes.

Kept: content type, payload format indicator, user properties, response topic, correlation data.
Message expiry is not kept as the relative number it is on the wire (the message may wait in the spool
for days): it becomes an absolute deadline (`storage.spool.MESSAGE_DEADLINE`), the spool expires the
message at it (counted as expired, never sent), and the cloud gets what is left of the interval.
Dropped: topic alias and subscription identifiers (they belong to one connection).
"""

from __future__ import annotations

import base64
import math
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from storage.spool import MESSAGE_DEADLINE


def spooled_properties(properties: Properties | None, now: float) -> dict[str, Any] | None:
    """The forwardable part of a received message's properties (None: nothing to forward)."""
    if properties is None:
        return None
    kept: dict[str, Any] = {}
    if (content_type := getattr(properties, "ContentType", None)) is not None:
        kept["content_type"] = content_type
    if (indicator := getattr(properties, "PayloadFormatIndicator", None)) is not None:
        kept["payload_format"] = indicator
    if user := getattr(properties, "UserProperty", None):
        kept["user"] = [[key, value] for key, value in user]
    if (response_topic := getattr(properties, "ResponseTopic", None)) is not None:
        kept["response_topic"] = response_topic
    if (correlation := getattr(properties, "CorrelationData", None)) is not None:
        kept["correlation_b64"] = base64.b64encode(correlation).decode()
    if (expiry := getattr(properties, "MessageExpiryInterval", None)) is not None:
        kept[MESSAGE_DEADLINE] = now + expiry
    return kept or None


def publish_properties(kept: dict[str, Any] | None, now: float) -> Properties | None:
    """paho PUBLISH properties for what `spooled_properties` kept (None: nothing to send)."""
    if not kept:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    if "content_type" in kept:
        properties.ContentType = kept["content_type"]
    if "payload_format" in kept:
        properties.PayloadFormatIndicator = kept["payload_format"]
    if kept.get("user"):
        properties.UserProperty = [(key, value) for key, value in kept["user"]]
    if "response_topic" in kept:
        properties.ResponseTopic = kept["response_topic"]
    if "correlation_b64" in kept:
        properties.CorrelationData = base64.b64decode(kept["correlation_b64"])
    if MESSAGE_DEADLINE in kept:
        # what is left of it (at least 1 s: a message past its deadline was expired in the spool)
        properties.MessageExpiryInterval = max(1, math.ceil(kept[MESSAGE_DEADLINE] - now))
    return properties
