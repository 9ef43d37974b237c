"""What a function prints reaches its log line by line (functions/worker_process.py). A line longer than
the copier's limit once stopped the copying: the pipe filled, the worker blocked on its next print, its
invocations timed out and every later line was lost."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from functions.worker_process import LOG_LINE_MAX, WorkerProcess, WorkerSpec

PRINTS = """
import sys
sys.stdout.write("x" * 200_000 + "\\n")
for i in range(50):
    sys.stdout.write(f"line {i} " + "y" * 10_000 + "\\n")
sys.stdout.write("last, without a newline")
sys.stdout.flush()
"""


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


def test_a_huge_line_is_cut_and_everything_after_it_still_reaches_the_log(tmp_path: Path) -> None:
    log = Lines()
    spec = WorkerSpec("f", "1", tmp_path, "h.h", "t", os.getuid(), os.getgid(), [], 64)
    worker = WorkerProcess(spec, log)  # type: ignore[arg-type]

    async def run() -> int | None:
        await worker.spawn([sys.executable, "-c", PRINTS], {"PATH": "/usr/bin:/bin"})
        assert worker.process is not None
        async with asyncio.timeout(10):
            code = await worker.process.wait()
            await asyncio.gather(*worker._pipes)
        return code

    assert asyncio.run(run()) == 0  # it did not block on a full pipe
    prefix = f"[f pid={worker.pid}] "
    first, note, *rest = log.lines
    assert first == prefix + "x" * LOG_LINE_MAX + "\n"
    assert note == f"{prefix}[... {200_000 - LOG_LINE_MAX} more bytes of that line dropped]\n"
    assert [line.split()[3] for line in rest[:-1]] == [str(i) for i in range(50)]
    assert rest[-1] == prefix + "last, without a newline\n"
