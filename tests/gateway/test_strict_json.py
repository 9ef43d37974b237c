"""Strict JSON (gateway/strict_json.py), what write commands and shadow documents are read with: what
millgate echoes back must be JSON again (RFC 8259 section 6: NaN and Infinity are not numbers)."""

from __future__ import annotations

import pytest

from gateway.strict_json import NotJson, loads


def test_json_reads_as_json() -> None:
    assert loads(b'{"value": 1.5, "id": [1, "a", null, true]}') == {"value": 1.5, "id": [1, "a", None, True]}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"NaN", "NaN, which is not JSON"),
        (b'{"v": -Infinity}', "-Infinity, which is not JSON"),
        (b"[1e400]", "1e400, beyond the largest number a double holds"),
        (b"9" * 5000, "more than 4300 digits"),
        (b"{oops", "payload is not JSON"),
        (b"\xff", "payload is not JSON"),
    ],
)
def test_what_is_not_strict_json_is_refused_with_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(NotJson, match=reason):
        loads(payload)


def test_nesting_past_the_parser_is_left_to_the_caller() -> None:
    with pytest.raises(RecursionError):
        loads(b"[" * 100_000)
