"""MQTT topic names and filters: validation, matching, and the topics millgate itself uses.

Every topic millgate builds comes from here, so a rename happens in one place.
It does no I/O.
"""

from __future__ import annotations

import re

MAX_TOPIC_BYTES = 65535


class TopicError(ValueError):
    """A topic name or filter that MQTT does not allow."""


# MQTT 5 section 1.5.4: no U+0000, and the control characters U+0001-U+001F and U+007F-U+009F are
# refused as malformed by mosquitto (mosquitto_validate_utf8); a newline would also end a line of the
# generated ACL file, which the topic is written into
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_common(topic: str) -> None:
    if not topic:
        raise TopicError("must not be empty")
    control = _CONTROL.search(topic)
    if control:
        raise TopicError(f"{topic!r} holds the control character U+{ord(control.group()):04X} at {control.start()}")
    if topic != topic.strip():
        # almost always a slip, and invisible in the generated ACL line, whose parser need not keep it
        raise TopicError(f"{topic!r} begins or ends with whitespace")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        raise TopicError("must be valid UTF-8 (it holds a lone surrogate)") from None
    if size > MAX_TOPIC_BYTES:
        raise TopicError(f"is longer than {MAX_TOPIC_BYTES} bytes")


def validate_topic_name(topic: str) -> str:
    """A topic to publish on: no wildcards (MQTT 3.1.1 section 4.7)."""
    _check_common(topic)
    if "+" in topic or "#" in topic:
        raise TopicError(f"{topic!r} is a filter: a topic to publish on may not contain '+' or '#'")
    return topic


def validate_topic_filter(topic: str) -> str:
    """A subscription filter: '+' fills one whole level, '#' only the whole last level."""
    _check_common(topic)
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise TopicError(f"{topic!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise TopicError(f"{topic!r}: '+' must be a whole level")
    return topic


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter`, wildcards excluded from '$' topics as brokers do."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic matches both filters (as `topic_matches` decides)."""
    if (first[:1] in ("+", "#") and second.startswith("$")) or (second[:1] in ("+", "#") and first.startswith("$")):
        return False
    a, b = first.split("/"), second.split("/")
    common: list[str] = []  # the levels a topic matching both has so far ('+' against '+': any)
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            # '#' also matches its parent level, unless that parent is the empty topic, which is no topic
            return (x is not None and y is not None) or "/".join(common) != ""
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
        common.append(y if x == "+" else x)
    return True


def status_topic(component: str) -> str:
    """Where a component publishes its heartbeat (retained)."""
    return f"millgate/{component}/status"


def component_prefix(component: str) -> str:
    """The filter covering everything a component publishes about itself."""
    return f"millgate/{component}/#"


STATUS_FILTER = "millgate/+/status"


def status_component(topic: str) -> str | None:
    """The component whose heartbeat `topic` carries (millgate/<component>/status), or None. The
    broker lets only that component write there, so this, not what the payload says, names it."""
    levels = topic.split("/")
    if len(levels) == 3 and levels[0] == "millgate" and levels[2] == "status" and levels[1]:
        return levels[1]
    return None


SET_SUFFIX = "/set"
SET_RESULT_SUFFIX = "/set/result"


def adapter_tag_topic(adapter: str, device: str, tag: str) -> str:
    """Where an adapter publishes a tag's value unless the tag names its own topic."""
    return f"{adapter}/{device}/{tag}"


def adapter_set_filter(adapter: str) -> str:
    """The write commands for every tag on its default topic."""
    return f"{adapter}/+/+{SET_SUFFIX}"


def set_topic(tag_topic: str) -> str:
    """Where a command to write a tag arrives."""
    return tag_topic + SET_SUFFIX


def set_result_topic(tag_topic: str) -> str:
    """Where the outcome of a write command is published."""
    return tag_topic + SET_RESULT_SUFFIX


def invoke_topic(function: str) -> str:
    """Where a function is invoked directly (SDK `invoke`), outside the subscription table."""
    return f"millgate/fn/{function}/invoke"


def reply_topic(function: str, request_id: str) -> str:
    """Where the answer to one of `function`'s own invocations comes back."""
    return f"millgate/fn/{function}/reply/{request_id}"


def reply_filter(function: str) -> str:
    return f"millgate/fn/{function}/reply/#"


# ---- device shadows (AWS IoT's own topic layout) -------------------------------------------------

SHADOW_OPERATIONS = ("get", "update", "delete")


def shadow_prefix(thing: str, name: str | None = None) -> str:
    """`$aws/things/<thing>/shadow` (classic) or `.../shadow/name/<name>` (named)."""
    return f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "")


def shadow_topic(thing: str, name: str | None, operation: str, suffix: str | None = None) -> str:
    """A request topic (`.../update`) or, with `suffix`, a response (`.../update/accepted`)."""
    topic = f"{shadow_prefix(thing, name)}/{operation}"
    return f"{topic}/{suffix}" if suffix else topic


# what the shadow service subscribes to: requests only, never its own answers
SHADOW_REQUEST_FILTERS = tuple(f"$aws/things/+/shadow/{op}" for op in SHADOW_OPERATIONS) + tuple(
    f"$aws/things/+/shadow/name/+/{op}" for op in SHADOW_OPERATIONS
)


def parse_shadow_request(topic: str) -> tuple[str, str | None, str] | None:
    """(thing, shadow name or None, operation) for a shadow request topic; None for any other topic."""
    levels = topic.split("/")
    if len(levels) == 5 and levels[:2] == ["$aws", "things"] and levels[3] == "shadow":
        thing, name, operation = levels[2], None, levels[4]
    elif len(levels) == 7 and levels[:2] == ["$aws", "things"] and levels[3:5] == ["shadow", "name"]:
        thing, name, operation = levels[2], levels[5], levels[6]
    else:
        return None
    return (thing, name, operation) if operation in SHADOW_OPERATIONS else None


# shadow sync between the core's shadow service and the uplink's cloud link: the cloud topic rides
# inside a local one, so it never collides with the local shadow service's own $aws topics
SHADOW_SYNC_UP_PREFIX = "millgate/core/shadow-sync/"
SHADOW_SYNC_DOWN_PREFIX = "millgate/uplink/shadow-sync/"
SHADOW_SYNC_DOWN_FILTER = SHADOW_SYNC_DOWN_PREFIX + "#"
SHADOW_SYNC_UP_FILTER = SHADOW_SYNC_UP_PREFIX + "#"


def shadow_sync_up_topic(cloud_topic: str) -> str:
    """Where the shadow service asks the uplink to publish `cloud_topic` in the cloud."""
    return SHADOW_SYNC_UP_PREFIX + cloud_topic


def shadow_sync_down_topic(cloud_topic: str) -> str:
    """Where the uplink hands over a message it received from the cloud on `cloud_topic`."""
    return SHADOW_SYNC_DOWN_PREFIX + cloud_topic


def shadow_sync_cloud_topic(local_topic: str) -> str | None:
    """The cloud topic carried by a shadow-sync topic (either direction); None for any other topic."""
    for prefix in (SHADOW_SYNC_UP_PREFIX, SHADOW_SYNC_DOWN_PREFIX):
        if local_topic.startswith(prefix):
            return local_topic[len(prefix) :]
    return None
