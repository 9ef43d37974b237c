"""A native long-lived function that cannot run, on a real gateway: one whose deployment has a problem
(a granted device that does not exist) and one whose import fails, after a while, with messages already
waiting. Callers are answered at once with the reason, as the dispatcher answers for an on-demand
function, instead of waiting for an answer that never comes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.gateway import RunningGateway, functions_gateway, wait_until
from tests.functions.test_runtime import function_status, invoke

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

IMPORT_FAILS = """
import time

time.sleep(4)  # the module's init takes a while, then fails
import no_such_module_for_millgate_tests

def function_handler(event, context):
    return event
"""

HANDLER = """
def function_handler(event, context):
    return event
"""

GATEWAY = """
[gateway]
thing_name = "pinned-cannot-run"
status_interval_s = 0.5

[[resources]]
name = "missing"
kind = "device"
path = "/dev/millgate-test-missing"

[[functions]]
name = "importfails"
code = "functions/importfails"
handler = "importfails.function_handler"
lifecycle = "long-lived"
run_as = "1052:1052"

[[functions]]
name = "undeployable"
code = "functions/undeployable"
handler = "undeployable.function_handler"
lifecycle = "long-lived"
run_as = "1053:1053"
resources = [{ name = "missing" }]
"""


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with functions_gateway(
        "mgpincr",
        GATEWAY,
        {"importfails": IMPORT_FAILS, "undeployable": HANDLER},
        expect=("broker", "core", "fn-importfails", "fn-undeployable"),
    ) as running:
        yield running


def test_messages_waiting_when_the_import_fails_and_later_ones_are_answered_with_the_reason(
    gw: RunningGateway,
) -> None:
    assert function_status(gw, "importfails")["init"] == "running"
    waiting: list[dict] = []
    early = threading.Thread(target=lambda: waiting.append(invoke(gw, "importfails", {"n": 0}, timeout_s=15)))
    early.start()
    wait_until(lambda: function_status(gw, "importfails")["init"] == "failed", 15, "the import to fail")
    early.join()
    assert waiting and waiting[0]["function_error"] == "Unhandled", waiting
    started = time.monotonic()
    later = invoke(gw, "importfails", {"n": 1}, timeout_s=5)
    assert time.monotonic() - started < 3
    for answer in (waiting[0], later):
        assert answer["function_error"] == "Unhandled"
        assert answer["error"].startswith("function cannot run: handler could not load: ModuleNotFoundError")


def test_a_function_with_deployment_problems_answers_at_once_why_it_cannot_run(gw: RunningGateway) -> None:
    assert function_status(gw, "undeployable")["function_state"] == "failed"
    started = time.monotonic()
    answer = invoke(gw, "undeployable", {"n": 1}, timeout_s=5)
    assert time.monotonic() - started < 3
    assert answer["function_error"] == "Unhandled"
    assert answer["error"].startswith("function cannot run: ")
    assert "/dev/millgate-test-missing does not exist" in answer["error"]
