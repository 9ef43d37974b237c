"""A piece of storage work killed at each of its steps in turn, as a crash (kill -9) would: a forked
child runs it and exits just before its Nth SQL statement or file rename, link or removal; the test
then checks what a rerun makes of what was left.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import traceback
from collections.abc import Callable
from typing import Any

KILLED = 99
FILE_STEPS = ("replace", "rename", "link", "unlink", "rmdir")


def run_killed_at(work: Callable[[], object], step: int) -> bool:
    """Run `work` in a child that dies just before its `step`-th step; True if it finished first."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            _die_at(step)
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the work failed by itself before step {step} (exit status {code})"
    return code == 0


def _die_at(step: int) -> None:
    steps = itertools.count(1)

    def tick(*_: object) -> None:
        if next(steps) == step:
            os._exit(KILLED)

    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(tick)  # called as each statement starts: before a COMMIT is a crash in it
        return db

    sqlite3.connect = traced  # type: ignore[assignment]
    for name in FILE_STEPS:
        real = getattr(os, name)

        def step_then(*args: Any, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            tick()
            return _real(*args, **kwargs)

        setattr(os, name, step_then)
