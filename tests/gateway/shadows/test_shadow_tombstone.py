"""A deleted shadow's version, by the clock (the handler with a clock of its own, on a real store):
created again within 48 hours it goes on from the deleted version; after that it starts afresh
(section 5 of ../shared/aws-shadow-semantics.md [S4]: "If a device shadow document has been deleted for
more than 48 hours, the version number of a new device shadow document with the same name will be 0")."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.shadows.handler import ShadowHandler
from storage.shadows import ShadowStore

HOURS = 3600.0


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _update(handler: ShadowHandler, thing: str, state: dict) -> dict:
    outcome = handler.handle(thing, None, "update", json.dumps({"state": state}).encode())
    assert outcome.error is None, outcome.error
    return json.loads(outcome.messages[0].payload)


def test_a_shadow_created_again_goes_on_from_the_deleted_version_for_48_hours_only(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    handler = ShadowHandler(ShadowStore(tmp_path / "shadows.db"), clock=clock)
    for value in range(3):
        _update(handler, "early", {"reported": {"a": value}})
        _update(handler, "late", {"reported": {"a": value}})
    assert handler.handle("early", None, "delete", b"").error is None
    assert handler.handle("late", None, "delete", b"").error is None
    clock.now += 48 * HOURS - 10
    assert _update(handler, "early", {"reported": {"a": 9}})["version"] == 4
    clock.now += 20
    assert _update(handler, "late", {"reported": {"a": 9}})["version"] == 1
