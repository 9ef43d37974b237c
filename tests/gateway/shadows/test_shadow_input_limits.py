"""Requests that are JSON in form but not storable as AWS IoT stores JSON: numbers beyond a double,
nesting far past the limit, text that is not Unicode. Each is refused with AWS's 400 and the request's
clientToken (../shared/aws-shadow-semantics.md sections 2, 3, 6, 7), over MQTT on the real broker,
and none costs the service a traceback in its log."""

from __future__ import annotations

import json
import logging
import queue
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.shadows.handler import ShadowHandler
from storage.shadows import ShadowStore
from tests.fixtures.gateway import RunningGateway
from tests.fixtures.shadows import ShadowClient

TOO_DEEP = "JSON contains too many levels of nesting; maximum is 6"


def update_answer(gateway: RunningGateway, thing: str, payload: bytes) -> tuple[str, dict[str, object]]:
    """An update's answer through a client subscribed to the answer topics only: the package's
    ShadowClient also reads every request, and a request nested 20,000 deep is more than its parser takes."""
    answers: queue.Queue[tuple[str, dict[str, object]]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    client = gateway.client("operator")
    client.on_subscribe = lambda *_a: subscribed.put(True)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        answers.put((message.topic.rsplit("/", 1)[1], json.loads(message.payload)))

    client.on_message = on_message
    topic = f"{ShadowClient.prefix(thing)}/update"
    client.subscribe([(f"{topic}/accepted", 1), (f"{topic}/rejected", 1)])
    subscribed.get(timeout=5)
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    return answers.get(timeout=5)


def failures_logged(gateway: RunningGateway, thing: str) -> list[str]:
    log = gateway.paths.component_log("core").read_text(errors="replace")
    return [line for line in log.splitlines() if "shadow-request-failed" in line and thing in line]


@pytest.mark.parametrize("number", ["1e400", "-1e999"])
def test_a_number_beyond_a_double_is_invalid_json_and_never_stored(
    shadows: ShadowClient, shadow_gateway: RunningGateway, number: str
) -> None:
    """sections 2 and 6: AWS refuses what is not JSON with 400 `Invalid JSON`; 1e400 has no double, so
    storing it would make every later answer carry `Infinity`, which is not JSON either."""
    thing = shadows.thing()
    payload = f'{{"clientToken":"big","state":{{"reported":{{"x":{number},"y":1}}}}}}'.encode()
    outcome, answer = shadows.request(thing, "update", payload)
    assert (outcome, answer["code"], answer["message"]) == ("rejected", 400, "Invalid JSON")
    assert answer["clientToken"] == "big"
    outcome, answer = shadows.request(thing, "get")
    assert outcome == "rejected" and answer["code"] == 404, "nothing was stored"
    assert failures_logged(shadow_gateway, thing) == []


def test_a_large_finite_number_is_still_stored_and_answered_as_a_number(shadows: ShadowClient) -> None:
    """section 2: only what has no double is refused; 1.5e308 and a 31-digit integer are JSON numbers."""
    thing = shadows.thing()
    shadows.update(thing, {"state": {"reported": {"x": 1.5e308, "n": 10**30}}})
    assert shadows.get(thing)["state"]["reported"] == {"x": 1.5e308, "n": 10**30}


@pytest.mark.parametrize(
    "nested",
    [
        '{"a":' * 600 + "1" + "}" * 600,  # 600 levels of objects: 3,601 bytes
        "[" * 600 + "1" + "]" * 600,  # of arrays, as the review's 1,250-byte request
    ],
    ids=["objects-600", "arrays-600"],
)
def test_nesting_far_past_the_limit_is_400_too_deep_with_the_client_token(
    shadows: ShadowClient, shadow_gateway: RunningGateway, nested: str
) -> None:
    """sections 6 and 7: nesting past 6 levels under desired/reported is 400 `JSON contains too many
    levels of nesting; maximum is 6`, however deep it goes, with the clientToken echoed [S1][S3]."""
    thing = shadows.thing()
    payload = f'{{"clientToken":"deep","state":{{"reported":{{"a":{nested}}}}}}}'.encode()
    outcome, answer = shadows.request(thing, "update", payload)
    assert (outcome, answer["code"], answer["message"]) == ("rejected", 400, TOO_DEEP)
    assert answer["clientToken"] == "deep"
    assert failures_logged(shadow_gateway, thing) == []


def test_nesting_deeper_than_the_parser_recurses_is_400_too_deep(gateway_factory) -> None:
    """sections 6 and 7: 20,000 levels (40 kB) are past what any JSON parser here reads: still AWS's
    400 for nesting, not a 500. Past that point there is no document, so no clientToken to echo.
    Its own gateway: the package's ShadowClient reads every shadow request and could not read this one."""
    gateway = gateway_factory()
    thing = ShadowClient.thing()
    nested = "[" * 20_000 + "1" + "]" * 20_000
    payload = f'{{"clientToken":"deep","state":{{"reported":{{"a":{nested}}}}}}}'.encode()
    outcome, answer = update_answer(gateway, thing, payload)
    assert (outcome, answer["code"], answer["message"]) == ("rejected", 400, TOO_DEEP)
    assert failures_logged(gateway, thing) == []


def test_text_that_is_not_unicode_is_400_with_the_client_token(
    shadows: ShadowClient, shadow_gateway: RunningGateway
) -> None:
    """sections 2 and 6: a lone surrogate escape (`\\ud800`) is valid JSON syntax but no Unicode text,
    so it can neither be stored as UTF-8 nor echoed: 400, and the caller still gets its token."""
    thing = shadows.thing()
    for payload in (
        b'{"clientToken":"t1","state":{"reported":{"x":"\\ud800"}}}',
        b'{"clientToken":"t1","state":{"desired":{"\\udfff":1}}}',
    ):
        outcome, answer = shadows.request(thing, "update", payload)
        assert (outcome, answer["code"], answer["message"]) == ("rejected", 400, "Invalid JSON")
        assert answer["clientToken"] == "t1"
    outcome, answer = shadows.request(thing, "update", b'{"clientToken":"\\ud800","state":{"reported":{"x":1}}}')
    assert (outcome, answer["code"], answer["message"]) == ("rejected", 400, "Invalid clientToken")
    outcome, answer = shadows.request(thing, "get", b'{"clientToken":"\\ud800"}')
    assert (outcome, answer["code"], answer["message"]) == ("rejected", 400, "Invalid clientToken")
    a_pair = b'{"clientToken":"t2","state":{"reported":{"smile":"\\ud83d\\ude00"}}}'
    outcome, answer = shadows.request(thing, "update", a_pair)
    assert outcome == "accepted" and answer["state"]["reported"] == {"smile": "\U0001f600"}
    assert failures_logged(shadow_gateway, thing) == []


def test_an_internal_failure_answers_500_with_the_client_token_and_one_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sections 3 and 6: even 500 `Internal service failure` echoes the clientToken, so the caller is
    answered rather than left to its timeout; the log has the traceback once, then one line a request.
    The store here is a real one that was closed under the handler."""
    store = ShadowStore(tmp_path / "shadows.db")
    handler = ShadowHandler(store)
    store.close()
    with caplog.at_level(logging.ERROR, logger="gateway.shadows.handler"):
        for token in ("first", "second"):
            payload = json.dumps({"clientToken": token, "state": {"reported": {"x": 1}}}).encode()
            outcome = handler.handle("press", None, "update", payload)
            answer = json.loads(outcome.messages[0].payload)
            assert (answer["code"], answer["message"]) == (500, "Internal service failure")
            assert answer["clientToken"] == token
        answer = json.loads(handler.handle("press", None, "get", b'{"clientToken":"third"}').messages[0].payload)
        assert (answer["code"], answer["clientToken"]) == (500, "third")
    failures = [r for r in caplog.records if "shadow-request-failed" in r.getMessage()]
    assert len(failures) == 3
    assert [r.exc_info is not None for r in failures] == [True, False, False]
