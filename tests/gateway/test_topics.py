"""Property tests for gateway/topics.py against MQTT's topic rules (3.1.1 section 4.7, MQTT 5 section 4.7):
'+' fills one whole level, '#' only the whole last level, and wildcards that begin a filter do not match
'$' topics. ../shared/DESIGN.md, "Messaging": subscriptions are the whitelist, and topic filters in them
are compiled into the broker's ACLs, so a wrong answer here opens or closes a route.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.topics import (
    MAX_TOPIC_BYTES,
    STATUS_FILTER,
    TopicError,
    component_prefix,
    filters_overlap,
    status_topic,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# A level: any text without the separator, the wildcards, control characters (Cc: U+0000-U+001F and
# U+007F-U+009F), lone surrogates (not UTF-8) or whitespace, which a topic may hold inside but not at
# either end (the sampled "a b" keeps one inside); may be empty.
level_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/+#")
plain_level = st.text(level_chars, max_size=4) | st.sampled_from(["", "a", "b", "a b", "line1", "$SYS", "$aws"])
topic_levels = st.lists(plain_level, min_size=1, max_size=6)


def join(levels: list[str]) -> str:
    return "/".join(levels)


@st.composite
def topics(draw: st.DrawFn) -> str:
    """A concrete topic name; sometimes a '$' one."""
    levels = draw(topic_levels)
    if draw(st.booleans()) and not levels[0].startswith("$"):
        levels[0] = "$" + levels[0]
    topic = join(levels)
    return topic or "x"


@st.composite
def filters(draw: st.DrawFn) -> str:
    """A valid filter: plain levels and '+' levels, optionally ending in '#'."""
    levels = draw(st.lists(plain_level | st.just("+"), min_size=0, max_size=6))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    return join(levels) or "#"


def reference_matches(topic_filter: str, topic: str) -> bool:
    """Level by level, as the MQTT spec words it; written apart from the code under test."""
    if topic.startswith("$") and topic_filter.startswith(("+", "#")):
        return False

    def match(f: list[str], t: list[str]) -> bool:
        if not f:
            return not t
        if f[0] == "#":  # the parent level and any number of children, including none
            return True
        if not t:
            return False
        return (f[0] == "+" or f[0] == t[0]) and match(f[1:], t[1:])

    return match(topic_filter.split("/"), topic.split("/"))


@st.composite
def filter_near(draw: st.DrawFn, topic: str) -> str:
    """A filter derived from `topic` so that matches are common: levels kept, changed, replaced by '+',
    a tail cut off by '#', or a level added or dropped."""
    levels = topic.split("/")
    out = []
    for level in levels:
        choice = draw(st.integers(0, 5))
        if choice == 0:
            out.append("+")
        elif choice == 1:
            out.append(draw(plain_level))
        else:
            out.append(level)
    change = draw(st.integers(0, 4))
    if change == 0:
        out = [*out[: draw(st.integers(0, len(out)))], "#"]
    elif change == 1:
        out.append(draw(plain_level | st.just("+")))
    elif change == 2 and len(out) > 1:
        out.pop()
    return join(out) or "#"


@given(filters())
@example("#")
@example("+")
@example("/")
@example("a//b/+/#")
@example("$SYS/#")
def test_valid_filters_are_accepted(topic_filter: str) -> None:
    assert validate_topic_filter(topic_filter) == topic_filter


@given(topic_levels, topic_levels)
def test_filter_with_hash_before_the_last_level_is_rejected(head: list[str], tail: list[str]) -> None:
    with pytest.raises(TopicError, match="'#' must be a whole level and the last one"):
        validate_topic_filter(join([*head, "#", *tail]))


@given(topic_levels, st.text(level_chars, max_size=3), st.text(level_chars, max_size=3), st.sampled_from("+#"))
@example(["a"], "a", "", "+")
@example(["a"], "", "/", "#")
def test_wildcard_inside_a_level_is_rejected(levels: list[str], before: str, after: str, wildcard: str) -> None:
    if not (before or after):
        after = "x"
    position = len(levels) // 2
    bad = join([*levels[:position], before + wildcard + after, *levels[position:]])
    with pytest.raises(TopicError, match="must be a whole level"):
        validate_topic_filter(bad)


@given(topics())
def test_topic_names_are_valid_filters_and_names(topic: str) -> None:
    assert validate_topic_name(topic) == topic
    assert validate_topic_filter(topic) == topic


@given(topic_levels, st.integers(0, 6), st.sampled_from(["+", "#"]))
def test_topic_name_with_a_wildcard_is_rejected(levels: list[str], position: int, wildcard: str) -> None:
    levels.insert(min(position, len(levels)) if wildcard == "+" else len(levels), wildcard)
    topic_filter = join(levels)
    assert validate_topic_filter(topic_filter) == topic_filter
    with pytest.raises(TopicError, match="is a filter"):
        validate_topic_name(topic_filter)


@pytest.mark.parametrize("validate", [validate_topic_name, validate_topic_filter])
@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "must not be empty"),
        ("a/\x00/b", "control character U\\+0000"),
        ("a/\ud800", "UTF-8"),
        ("é" * (MAX_TOPIC_BYTES // 2 + 1), f"longer than {MAX_TOPIC_BYTES} bytes"),
        ("line1/x\ntopic readwrite line2/secret", "control character U\\+000A at 7"),
        ("a/\x7f", "control character U\\+007F"),
        ("a/\x9fb", "control character U\\+009F"),
        (" a/b", "begins or ends with whitespace"),
        ("a/b\u3000", "begins or ends with whitespace"),
    ],
    ids=[
        "empty",
        "nul",
        "lone-surrogate",
        "too-long-in-bytes",
        "newline",
        "delete",
        "c1-control",
        "lead-space",
        "ideographic-space",
    ],
)
def test_topics_mqtt_cannot_carry_are_rejected(validate, bad: str, why: str) -> None:
    with pytest.raises(TopicError, match=why):
        validate(bad)


@given(topics(), st.sampled_from([*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0))]), st.data())
def test_a_control_character_anywhere_is_rejected(topic: str, control: str, data: st.DataObject) -> None:
    """MQTT 5 section 1.5.4 and mosquitto_validate_utf8: U+0000-U+001F and U+007F-U+009F are malformed."""
    at = data.draw(st.integers(0, len(topic)))
    bad = topic[:at] + control + topic[at:]
    for validate in (validate_topic_name, validate_topic_filter):
        with pytest.raises(TopicError, match=f"control character U\\+{ord(control):04X}"):
            validate(bad)


def test_whitespace_inside_a_topic_is_kept() -> None:
    assert validate_topic_name("hall 2/press 01") == "hall 2/press 01"


def test_longest_topic_is_accepted() -> None:
    assert validate_topic_name("a" * MAX_TOPIC_BYTES)


@given(st.data(), topics())
def test_topic_matches_agrees_with_reference(data: st.DataObject, topic: str) -> None:
    topic_filter = data.draw(filter_near(topic) | filters())
    assert topic_matches(topic_filter, topic) == reference_matches(topic_filter, topic)


@given(filters(), topics())
def test_topic_matches_agrees_with_reference_on_unrelated_pairs(topic_filter: str, topic: str) -> None:
    assert topic_matches(topic_filter, topic) == reference_matches(topic_filter, topic)


@given(topics())
def test_every_topic_matches_itself(topic: str) -> None:
    assert topic_matches(topic, topic)


@given(topics())
def test_hash_matches_every_topic_but_dollar_topics(topic: str) -> None:
    assert topic_matches("#", topic) == (not topic.startswith("$"))


@given(topics())
def test_leading_wildcards_never_match_dollar_topics(topic: str) -> None:
    dollar = topic if topic.startswith("$") else "$" + topic
    levels = dollar.split("/")
    assert not topic_matches("#", dollar)
    assert not topic_matches(join(["+", *levels[1:]]), dollar)
    assert not topic_matches("+/#", dollar)
    # named explicitly, a '$' level matches, and wildcards after it work as anywhere else
    assert topic_matches(join([levels[0], "#"]), dollar)
    assert topic_matches(join([levels[0], *["+"] * (len(levels) - 1)]), dollar)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking/wimbledon", True),
        ("sport/#", "sport", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("#", "$SYS/broker", False),
        ("$aws/things/+/shadow/#", "$aws/things/press-01/shadow/update", True),
    ],
)
def test_topic_matches_the_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    """The non-normative examples in MQTT 3.1.1 section 4.7."""
    assert topic_matches(topic_filter, topic) is expected


def test_component_topics_are_valid_and_covered_by_the_status_filter() -> None:
    topic = status_topic("adapter-line1")
    assert validate_topic_name(topic) == "millgate/adapter-line1/status"
    assert topic_matches(STATUS_FILTER, topic)
    assert topic_matches(component_prefix("adapter-line1"), topic)
    assert not topic_matches(component_prefix("adapter-line2"), topic)


def witness(first: str, second: str) -> str:
    """A topic both filters would match if they overlap: the literal level where there is one, 'x'
    for '+', and after a '#' the other filter's rest ('x' for its wildcards)."""
    a, b = first.split("/"), second.split("/")
    out: list[str] = []
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            rest = b[index:] if x == "#" else a[index:]
            return join(out + ["x" if level in ("+", "#") else level for level in rest]) or "x"
        assert x is not None and y is not None, "filters of different lengths without '#' do not overlap"
        level = y if x == "+" else x
        out.append("x" if level == "+" else level)
    return join(out)


@given(st.data(), topics())
def test_filters_overlap_exactly_when_some_topic_matches_both(data: st.DataObject, topic: str) -> None:
    first = data.draw(filter_near(topic) | filters())
    second = data.draw(filter_near(topic) | filters())
    if topic_matches(first, topic) and topic_matches(second, topic):
        assert filters_overlap(first, second)
    if filters_overlap(first, second):
        both = witness(first, second)
        assert topic_matches(first, both) and topic_matches(second, both), both
    assert filters_overlap(first, second) == filters_overlap(second, first)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("line1/#", "line1/+/+/set", True),
        ("line1/#", "line1", True),
        ("line1/+", "line1", False),
        ("line1/+/temp", "line1/press/+", True),
        ("line1/+/temp", "line2/#", False),
        ("#", "$aws/things/x/shadow/update", False),
        ("$aws/#", "$aws/+/x", True),
    ],
)
def test_filters_overlap_examples(first: str, second: str, expected: bool) -> None:
    assert filters_overlap(first, second) is expected
