"""The operator commands' output when its reader goes away (`| head -1`) or was never there (`>&-`):
quiet, exit 141 like any program killed by SIGPIPE, never a hang; and `millgate sub` keeping its
subscription across a broker restart.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from gateway.status import supervisor_proxy
from storage.spool import Message, Spool
from tests.fixtures.gateway import REPO, RunningGateway

MILLGATE = str(Path(sys.executable).parent / "millgate")
READER_GONE = 141  # 128 + SIGPIPE


def first_line_then_close(argv: list[str], timeout_s: float = 20) -> tuple[str, int, str]:
    """Run a millgate command into a pipe, read one line and close the pipe, as `| head -1` does; its
    first line, exit code and stderr."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert process.stdout is not None and process.stderr is not None
    try:
        first = process.stdout.readline().decode()
        process.stdout.close()
        code = process.wait(timeout_s)
    finally:
        process.kill()
        process.wait()
    return first, code, process.stderr.read().decode()


def test_logs_into_head_ends_quietly_with_141(dirs) -> None:
    config, state = dirs
    (state / "log" / "system").mkdir(parents=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    lines = "".join(f"{stamp} INFO core gateway.core: event=n n={n}\n" for n in range(20000))
    (state / "log" / "system" / "core.log").write_text(lines)
    first, code, err = first_line_then_close(
        [MILLGATE, "logs", "--since", "1h", "--config", str(config), "--state", str(state)]
    )
    assert first == f"{stamp} INFO core gateway.core: event=n n=0\n"
    assert (code, err) == (READER_GONE, "")


def test_spool_export_to_stdout_into_head_ends_quietly_with_141(dirs) -> None:
    config, state = dirs
    (state / "uplink").mkdir(parents=True)
    spool = Spool(state / "uplink" / "spool.db")
    spool.append([Message(f"plant/{n}", b"x" * 100) for n in range(2000)])
    spool.close()
    first, code, err = first_line_then_close(
        [MILLGATE, "spool", "export", "-", "--config", str(config), "--state", str(state)]
    )
    assert first.startswith('{"topic": "plant/0"')
    assert (code, err) == (READER_GONE, "")


def test_a_closed_stdout_is_refused_in_one_line(dirs) -> None:
    config, state = dirs
    (state / "log" / "system").mkdir(parents=True)
    (state / "log" / "system" / "core.log").write_text("2026-11-25T20:14:08.000Z INFO core gateway.core: x\n")
    done = subprocess.run(
        ["bash", "-c", f'"{MILLGATE}" logs --config "{config}" --state "{state}" >&-'],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert done.stderr == "millgate logs: standard output is closed; send it to /dev/null to discard it\n"


def _sub(gw: RunningGateway, topic_filter: str) -> subprocess.Popen[bytes]:
    argv = [MILLGATE, "sub", topic_filter, "--config", str(gw.config_dir), "--state", str(gw.state_dir)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)


class Publisher:
    """Publishes `topic n` as the operator every 0.2 s until stopped (a subscription lands at some point)."""

    def __init__(self, gw: RunningGateway, topic: str):
        self.client = gw.client("operator")
        self.topic = topic
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stopped.wait(0.2):
            self.client.publish(self.topic, str(n).encode(), qos=1)
            n += 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def test_sub_into_head_ends_quietly_with_141_instead_of_hanging(gateway_factory) -> None:
    gw = gateway_factory()
    publisher = Publisher(gw, "line1/temp")
    sub = _sub(gw, "line1/#")
    assert sub.stdout is not None and sub.stderr is not None
    try:
        assert sub.stdout.readline().decode().startswith("line1/temp ")
        sub.stdout.close()  # `head -1` has what it wanted; the next message finds no reader
        code = sub.wait(15)
    finally:
        publisher.stop()
        sub.kill()
        sub.wait()
    assert (code, sub.stderr.read().decode()) == (READER_GONE, "")


class Lines:
    """A process's stdout lines as they come, read in a thread so that waiting for one can time out."""

    def __init__(self, stream: IO[bytes]):
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.queue.put(line.decode())

    def wait_for(self, prefix: str, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        return None


def test_sub_subscribes_again_after_the_broker_restarts(gateway_factory) -> None:
    gw = gateway_factory()
    sub = _sub(gw, "after/#")
    assert sub.stdout is not None and sub.stderr is not None
    lines = Lines(sub.stdout)
    publisher = Publisher(gw, "after/before-restart")
    try:
        assert lines.wait_for("after/before-restart ", 15)
        publisher.stop()
        supervisor = supervisor_proxy(gw.paths).supervisor
        supervisor.stopProcess("broker", True)
        supervisor.startProcess("broker", True)
        publisher = Publisher(gw, "after/restart")
        # paho reconnects by itself, after 1, 2, 4 ... s
        assert lines.wait_for("after/restart ", 30), "no message reached `millgate sub` after the restart"
    finally:
        publisher.stop()
        sub.terminate()
        sub.wait(10)
    notes = sub.stderr.read().decode()
    assert "millgate sub: lost the broker" in notes
    assert "millgate sub: reconnected to the broker; messages published while it was away were missed" in notes
