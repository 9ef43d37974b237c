"""The on-demand pool's idle reaper on a real gateway: several workers that go idle together are stopped
one after the other, and messages that arrive meanwhile take whichever of them is still idle; the core
keeps running and every message is answered.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.gateway import RunningGateway, functions_gateway, wait_until
from tests.functions.test_runtime import invoke

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running functions under other uids needs root")

# a worker that takes a while to exit (it closes something at exit), as a real stop may take up to 2 s
SLOW_EXIT = """
import atexit, os, time

atexit.register(time.sleep, 1.5)

def function_handler(event, context):
    time.sleep(event.get("s", 0))
    return {"pid": os.getpid()}
"""

GATEWAY = """
[gateway]
thing_name = "reaper-test"
status_interval_s = 0.5

[[functions]]
name = "slowexit"
code = "functions/slowexit"
handler = "slowexit.function_handler"
run_as = "1051:1051"
max_concurrency = 4
idle_s = 1
timeout_s = 10
"""


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with functions_gateway("mgreap", GATEWAY, {"slowexit": SLOW_EXIT}, expect=("broker", "core")) as running:
        yield running


def _in_parallel(gw: RunningGateway, events: list[dict]) -> list[dict]:
    answers: list[dict] = []
    threads = [threading.Thread(target=lambda e=e: answers.append(invoke(gw, "slowexit", e))) for e in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_messages_arriving_while_idle_workers_are_stopped_are_answered_and_the_core_lives(
    gw: RunningGateway,
) -> None:
    core = gw.status()["processes"]["core"]["pid"]
    warm = _in_parallel(gw, [{"s": 0.5}] * 4)
    assert len({a["result"]["pid"] for a in warm}) == 4  # four workers, idle from about the same moment
    log = gw.paths.component_log("core")
    stopped_before = log.read_text().count("function=slowexit event=worker-idle-stopped")
    # the reaper stops the first of them (1.5 s, its exit): meanwhile messages take the others
    wait_until(
        lambda: log.read_text().count("function=slowexit event=worker-idle-stopped") > stopped_before,
        10,
        "the reaper to start stopping idle workers",
        interval_s=0.02,
    )
    started = time.monotonic()
    answers = _in_parallel(gw, [{"s": 2}] * 3)
    assert all(a["function_error"] is None for a in answers), answers
    assert time.monotonic() - started < 8  # answered by the running core, not redelivered after a restart
    assert gw.status()["processes"]["core"]["pid"] == core
    assert "Traceback" not in log.read_text()
