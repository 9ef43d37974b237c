"""The protocol-neutral adapter base: the publish decision (deadbands, every poll, quality changes),
the publisher's one-payload-per-topic buffer, and `/set` command parsing and refusal."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from adapters.base.change_filter import ChangeFilter
from adapters.base.commands import CommandRouter, WriteRefused, parse_command
from adapters.base.publisher import Publisher
from adapters.base.tag import Point, TagValue
from gateway.mqtt import Received


def readings(filter_: ChangeFilter, point: Point, values: list[object]) -> list[object]:
    return [v for v in values if filter_.admit(point, TagValue.good(v, 0))]


def test_absolute_deadband_publishes_only_moves_beyond_it() -> None:
    point = Point("press", "t", "l/press/t", deadband=0.5)
    assert readings(ChangeFilter(), point, [20.0, 20.3, 20.5, 20.6, 20.2, 20.0]) == [20.0, 20.6, 20.0]


def test_percent_deadband_is_relative_to_the_last_published_value() -> None:
    point = Point("press", "p", "l/press/p", deadband_percent=10)
    assert readings(ChangeFilter(), point, [100, 105, 111, 120, 0, 0, 1]) == [100, 111, 0, 1]


def test_no_deadband_publishes_changes_and_every_poll_publishes_all() -> None:
    assert readings(ChangeFilter(), Point("d", "a", "x/d/a"), [1, 1, 2, 2, "x", "x"]) == [1, 2, "x"]
    assert readings(ChangeFilter(), Point("d", "a", "x/d/a", every_poll=True), [1, 1, 1]) == [1, 1, 1]


def test_quality_changes_always_publish() -> None:
    point = Point("press", "t", "l/press/t", deadband=100)
    f = ChangeFilter()
    assert f.admit(point, TagValue.good(1.0, 0))
    assert f.admit(point, TagValue.bad("timeout", 1))
    assert not f.admit(point, TagValue.bad("timeout", 2))
    assert f.admit(point, TagValue.bad("exception 2", 3))
    assert f.admit(point, TagValue.good(1.0, 4))


def test_a_non_finite_value_is_never_invalid_json_and_an_unchanged_one_is_not_republished() -> None:
    """Protocol adapters turn NaN into a bad reading with their own reason; whatever still reaches the
    base is published as bad with value null, never as the `NaN` JSON does not have."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} is not JSON")

    for value in (math.nan, math.inf, -math.inf):
        body = json.loads(TagValue.good(value, 5).payload("degC"), parse_constant=refuse)
        assert body["value"] is None and body["quality"] == "bad" and "not a finite number" in body["reason"]
        assert body["units"] == "degC" and body["ts"] == 5
    for point in (Point("d", "a", "x/d/a"), Point("d", "b", "x/d/b", deadband=0.5, deadband_percent=5)):
        values = [1.0, math.nan, math.nan, math.inf, math.inf, -math.inf, 2.0, 2.0]
        assert readings(ChangeFilter(), point, values) == values[:2] + values[3:4] + values[5:7]


class RecordingBroker:
    """Stands in for the broker connection (the end-to-end test uses the real one)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.connected = True

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout_s: float = 10
    ):
        self.sent.append((topic, json.loads(payload)))


def test_publisher_keeps_only_the_newest_payload_per_topic_while_waiting() -> None:
    async def scenario() -> None:
        publisher = Publisher("line1", window=8)
        broker = RecordingBroker()
        point = Point("press", "count", "line1/press/count", every_poll=True)
        for value in range(5):
            publisher.offer(point, TagValue.good(value, value))
        assert publisher.backlog == 1 and publisher.superseded == 4
        task = asyncio.create_task(publisher.run(broker))
        await asyncio.sleep(0.05)
        task.cancel()
        assert broker.sent == [("line1/press/count", {"value": 4, "quality": "good", "ts": 4})]

    asyncio.run(scenario())


def test_commands_parse_bare_values_and_objects_and_refuse_garbage() -> None:
    assert parse_command(b"42") == (42, None)
    assert parse_command(b'{"value": true, "id": "a1"}') == (True, "a1")
    with pytest.raises(WriteRefused, match="not JSON"):
        parse_command(b"forty")
    with pytest.raises(WriteRefused, match='"value"'):
        parse_command(b'{"v": 1}')


def test_read_only_tag_refuses_a_write_on_set_result() -> None:
    class NeverWrites:
        def submit_write(self, point: Point, value: object) -> asyncio.Future:
            raise AssertionError("must not be asked")

    async def scenario() -> list[tuple[str, dict]]:
        broker = RecordingBroker()
        points = [Point("press", "t", "line1/press/t"), Point("press", "sp", "custom/sp", writable=True)]
        router = CommandRouter("line1", points, NeverWrites(), broker)
        assert router.filters() == ["line1/+/+/set", "custom/sp/set"]
        await router.handle(Received("line1/press/t/set", b'{"value": 1, "id": 7}', 1, False))
        return broker.sent

    [(topic, body)] = asyncio.run(scenario())
    assert topic == "line1/press/t/set/result"
    assert body["ok"] is False and "read-only" in body["error"] and body["id"] == 7


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"value": 1, "id": NaN}', "NaN, which is not JSON"),
        (b"Infinity", "Infinity, which is not JSON"),
        (b'{"value": -Infinity}', "-Infinity, which is not JSON"),
        (b"1e400", "beyond the largest number"),
        (b"1" + b"0" * 5000, "more than 4300 digits"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_commands_that_are_not_strict_json_or_too_much_for_the_parser_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(WriteRefused, match=message):
        parse_command(payload)


def test_every_command_gets_one_valid_json_result_even_when_the_writer_fails_unexpectedly() -> None:
    """A payload the parser could not take, or a writer that raised something it should not have, used to
    end in LocalMqtt's handler-failed log and no result; `"id": NaN` came back as invalid JSON."""

    class BrokenWriter:
        def submit_write(self, point: Point, value: object) -> asyncio.Future:
            raise OverflowError("int too large to convert to float")

    def strict(payload: bytes | str) -> dict:
        def refuse(constant: str) -> object:
            raise AssertionError(f"{constant} in a result is not JSON")

        return json.loads(payload, parse_constant=refuse)

    payloads = [b'{"value": 1, "id": NaN}', b"1" + b"0" * 5000, b"[" * 100_000, b'{"value": 7, "id": "c9"}']

    async def scenario() -> list[tuple[str, dict]]:
        sent: list[tuple[str, dict]] = []

        class StrictBroker(RecordingBroker):
            async def publish(
                self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout_s: float = 10
            ):
                sent.append((topic, strict(payload)))

        router = CommandRouter("line1", [Point("press", "t", "line1/press/t", writable=True)], BrokenWriter())
        router.broker = StrictBroker()
        for payload in payloads:
            await router.handle(Received("line1/press/t/set", payload, 1, False))
        return sent

    sent = asyncio.run(scenario())
    assert [topic for topic, _ in sent] == ["line1/press/t/set/result"] * len(payloads)
    assert all(body["ok"] is False for _, body in sent)
    assert "NaN" in sent[0][1]["error"] and "id" not in sent[0][1]
    assert "digits" in sent[1][1]["error"] and "nested too deeply" in sent[2][1]["error"]
    assert sent[3][1]["id"] == "c9" and "OverflowError" in sent[3][1]["error"]
