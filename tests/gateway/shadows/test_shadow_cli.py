"""`millgate shadow get|update|delete` against the real service (issue 6 item 4)."""

from __future__ import annotations

import json

from tests.fixtures.gateway import RunningGateway
from tests.fixtures.shadows import ShadowClient


def test_cli_update_get_delete_print_accepted_json_and_exit_0(shadow_gateway: RunningGateway) -> None:
    thing = ShadowClient.thing()
    update = shadow_gateway.cli("shadow", "update", thing, '{"state": {"desired": {"speed": 3}}}')
    assert update.returncode == 0, update.stderr
    assert json.loads(update.stdout)["state"] == {"desired": {"speed": 3}}
    got = shadow_gateway.cli("shadow", "get", thing)
    assert got.returncode == 0 and json.loads(got.stdout)["state"]["delta"] == {"speed": 3}
    deleted = shadow_gateway.cli("shadow", "delete", thing)
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["version"] == 1


def test_cli_prints_rejected_json_and_exits_1(shadow_gateway: RunningGateway) -> None:
    thing = ShadowClient.thing()
    missing = shadow_gateway.cli("shadow", "get", thing)
    assert missing.returncode == 1
    answer = json.loads(missing.stdout)
    assert answer["code"] == 404 and answer["message"] == f"No shadow exists with name: '{thing}'"
    bad = shadow_gateway.cli("shadow", "update", thing, "{oops")
    assert bad.returncode == 1 and json.loads(bad.stdout)["message"] == "Invalid JSON"


def test_cli_named_shadow_and_document_from_stdin(shadow_gateway: RunningGateway) -> None:
    thing = ShadowClient.thing()
    update = shadow_gateway.cli("shadow", "update", thing, "--name", "cfg", input='{"state": {"reported": {"x": 1}}}')
    assert update.returncode == 0, update.stderr
    assert json.loads(shadow_gateway.cli("shadow", "get", thing, "--name", "cfg").stdout)["state"] == {
        "reported": {"x": 1}
    }
    assert shadow_gateway.cli("shadow", "get", thing).returncode == 1
