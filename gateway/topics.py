"""MQTT topic names and filters: validation, matching, and the topics millgate itself uses.

Every topic millgate builds comes from here, so a rename happens in one place.
It does no I/O.
"""

from __future__ import annotations

MAX_TOPIC_BYTES = 65535


class TopicError(ValueError):
    """A topic name or filter that MQTT does not allow."""


def _check_common(topic: str) -> None:
    if not topic:
        raise TopicError("must not be empty")
    if "\x00" in topic:
        raise TopicError("must not contain a NUL character")
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


def status_topic(component: str) -> str:
    """Where a component publishes its heartbeat (retained)."""
    return f"millgate/{component}/status"


def component_prefix(component: str) -> str:
    """The filter covering everything a component publishes about itself."""
    return f"millgate/{component}/#"


STATUS_FILTER = "millgate/+/status"


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
