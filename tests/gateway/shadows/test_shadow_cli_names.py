"""`millgate shadow` refuses a thing or shadow name that cannot be one level of a shadow topic before it
sends anything: `+` and `#` are MQTT wildcards and `/` splits levels (../shared/aws-shadow-semantics.md
section 7: a shadow name must be a single topic level; thing names are AWS IoT's 1-128 of letters,
digits, `:`, `_` and `-`)."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.gateway import RunningGateway


@pytest.mark.parametrize("thing", ["press+1", "press#", "line/press", ""])
def test_a_thing_name_that_is_no_topic_level_is_refused_with_exit_2(shadow_gateway: RunningGateway, thing: str) -> None:
    started = time.monotonic()
    result = shadow_gateway.cli("shadow", "get", thing)
    assert result.returncode == 2, result
    assert f"millgate shadow: thing name {thing!r} is not valid" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert time.monotonic() - started < 8, "refused at once, not after waiting for an answer"


@pytest.mark.parametrize("verb", ["get", "update", "delete"])
def test_a_shadow_name_that_is_no_topic_level_is_refused_with_exit_2(shadow_gateway: RunningGateway, verb: str) -> None:
    extra = ['{"state": {"reported": {"x": 1}}}'] if verb == "update" else []
    result = shadow_gateway.cli("shadow", verb, "press-01", *extra, "--name", "recipe/a")
    assert result.returncode == 2, result
    assert "millgate shadow: --name 'recipe/a' is not a valid shadow name" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_name_at_the_length_limits_is_sent(shadow_gateway: RunningGateway) -> None:
    thing, name = "t" * 128, "n" * 64
    update = shadow_gateway.cli("shadow", "update", thing, '{"state": {"reported": {"x": 1}}}', "--name", name)
    assert update.returncode == 0, update.stderr
    too_long = shadow_gateway.cli("shadow", "get", "t" * 129)
    assert too_long.returncode == 2 and "is not valid" in too_long.stderr
