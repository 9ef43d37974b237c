"""`millgate logs` as an operator runs it (the real console script on a log dir): function worker lines
placed by their own time, and `-f` losing nothing written while the backlog prints.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.log_files import line_time
from tests.fixtures.gateway import REPO, run_cli, wait_until

MILLGATE = str(Path(sys.executable).parent / "millgate")


def _local(stamp: datetime) -> str:
    """Python logging's default stamp (local time), as a function's own logging writes it."""
    return stamp.strftime("%Y-%m-%d %H:%M:%S,") + f"{stamp.microsecond // 1000:03d}"


def _utc(stamp: datetime) -> str:
    """gateway/logs.py's stamp: UTC, said so."""
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture
def dirs(dirs: tuple[Path, Path]) -> tuple[Path, Path]:
    """The operations tests' config and state dirs (tests/ops/conftest.py), with the log dirs made."""
    for sub in ("system", "user"):
        (dirs[1] / "log" / sub).mkdir(parents=True)
    return dirs


def test_a_function_workers_prefixed_line_has_the_time_after_its_prefix() -> None:
    # functions/worker_process.py: each line an on-demand worker prints is written `[<fn> pid=N] <line>`
    plain = line_time("2026-11-25 20:14:08,123 INFO anomaly: score=0.9")
    assert plain is not None
    assert line_time("[anomaly pid=4242] 2026-11-25 20:14:08,123 INFO anomaly: score=0.9") == plain
    assert line_time("[line-1.v2 pid=7] 2026-11-25T20:14:08Z x") == line_time("2026-11-25T20:14:08Z x")
    assert line_time("[anomaly pid=4242] Traceback (most recent call last):") is None
    assert line_time("[anomaly pid=4242] [... 12 more bytes of that line dropped]") is None


def test_since_shows_function_lines_and_the_merged_view_puts_them_in_time_order(dirs) -> None:
    config, state = dirs
    now = datetime.now().astimezone()
    old, recent, newest = now - timedelta(hours=3), now - timedelta(minutes=5), now - timedelta(minutes=1)
    (state / "log" / "user" / "anomaly.log").write_text(
        f"[anomaly pid=4242] {_local(old)} INFO anomaly: long ago\n"
        f"[anomaly pid=4243] {_local(recent)} INFO anomaly: five minutes ago\n"
    )
    (state / "log" / "system" / "core.log").write_text(
        f"{_utc(old)} INFO core gateway.core: event=old\n{_utc(newest)} INFO core gateway.core: event=newest\n"
    )
    since = run_cli("logs", "--since", "1h", config=config, state=state)
    assert since.returncode == 0, since.stderr
    assert since.stdout.splitlines() == [
        f"fn-anomaly: [anomaly pid=4243] {_local(recent)} INFO anomaly: five minutes ago",
        f"core: {_utc(newest)} INFO core gateway.core: event=newest",
    ]
    merged = run_cli("logs", config=config, state=state)
    assert [line.split(": ", 1)[0] for line in merged.stdout.splitlines()] == [
        "core",
        "fn-anomaly",
        "fn-anomaly",
        "core",
    ]


def test_follow_prints_a_line_written_while_the_backlog_was_printing(dirs) -> None:
    config, state = dirs
    log = state / "log" / "system" / "core.log"
    stamp = _utc(datetime.now().astimezone())
    log.write_text("".join(f"{stamp} INFO core gateway.core: event=backlog n={n:06d}\n" for n in range(8000)))
    read_end, write_end = os.pipe()
    argv = [MILLGATE, "logs", "core", "-f", "--since", "1h", "--config", str(config), "--state", str(state)]
    follower = subprocess.Popen(argv, stdout=write_end, stderr=subprocess.PIPE, cwd=REPO)
    os.close(write_end)

    def blocked_on_the_pipe() -> bool:  # the backlog was read and its printing waits for us
        return "pipe_write" in Path(f"/proc/{follower.pid}/wchan").read_text()

    seen = b""
    try:
        wait_until(blocked_on_the_pipe, 15, "the backlog to fill the pipe")
        with log.open("a") as handle:
            handle.write(f"{stamp} INFO core gateway.core: event=written-meanwhile\n")
        deadline = time.monotonic() + 5
        while b"event=written-meanwhile" not in seen and time.monotonic() < deadline:
            if select.select([read_end], [], [], 0.2)[0]:
                seen += os.read(read_end, 1 << 16)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
        os.close(read_end)
    lines = seen.decode().splitlines()
    assert lines[0] == f"{stamp} INFO core gateway.core: event=backlog n=000000"
    assert lines.count(f"{stamp} INFO core gateway.core: event=written-meanwhile") == 1
    assert sum("event=backlog" in line for line in lines) == 8000
