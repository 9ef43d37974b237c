"""Shared fixtures: short temp dirs (unix socket paths are limited to 107 bytes) and whole gateways
started with `millgate run` (real supervisord, real mosquitto), always stopped afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.credentials import load_credentials
from gateway.mqtt import connect_blocking, paho_client
from gateway.paths import GatewayPaths

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mg", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_cli(*args: str, config: Path | None = None, state: Path | None = None, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The `millgate` console script as an operator runs it."""
    argv = [str(Path(sys.executable).parent / "millgate"), *args]
    if config is not None:
        argv += ["--config", str(config)]
    if state is not None:
        argv += ["--state", str(state)]
    return subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, cwd=REPO)


@dataclass
class RunningGateway:
    config_dir: Path
    state_dir: Path
    process: subprocess.Popen[bytes]
    output: Path
    clients: list[paho.Client] = field(default_factory=list)

    @property
    def paths(self) -> GatewayPaths:
        return GatewayPaths.resolve(self.config_dir, self.state_dir, None)

    def cli(self, *args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, config=self.config_dir, state=self.state_dir, input=input, timeout=timeout)

    def status(self) -> dict:
        result = self.cli("status", "--json")
        return json.loads(result.stdout)

    def client(self, identity: str, client_id: str | None = None) -> paho.Client:
        """A connected paho client logged in with a component's own credentials."""
        creds = load_credentials(self.paths.credentials_dir, identity)
        client = paho_client(creds, client_id or f"test-{identity}-{time.time_ns()}")
        connect_blocking(client, self.paths.broker_socket)
        self.clients.append(client)
        return client

    def descendants(self) -> list[int]:
        """Every live process whose command line mentions this gateway's state dir."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if str(self.state_dir) in cmdline and stat.split(")")[-1].split()[0] != "Z":
                found.append(int(entry.name))
        return found

    def stop(self, timeout_s: float = 15) -> float:
        """SIGTERM the gateway; return how long it took to exit."""
        for client in self.clients:
            client.disconnect()
            client.loop_stop()
        self.clients.clear()
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return time.monotonic() - started

    def kill_leftovers(self) -> None:
        for pid in self.descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_gateway(config_dir: Path, state_dir: Path, expect: tuple[str, ...] = ("broker", "core")) -> RunningGateway:
    output = state_dir.parent / f"{state_dir.name}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "millgate"), "run", "--config", str(config_dir),
             "--state", str(state_dir)],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )
    gw = RunningGateway(config_dir, state_dir, process, output)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"millgate run exited {process.returncode}:\n{output.read_text()}")
        if not gw.paths.supervisor_socket.exists():
            return False
        status = gw.status()
        states = {name: p["state"] for name, p in status["processes"].items()}
        return status["broker"]["reachable"] and all(states.get(name) == "RUNNING" for name in expect)

    try:
        wait_until(ready, 20, "the gateway to come up", interval_s=0.2)
    except BaseException:
        gw.stop()
        gw.kill_leftovers()
        raise
    return gw


MINIMAL_GATEWAY = """
[gateway]
thing_name = "test-gw"
status_interval_s = 0.5
"""


@pytest.fixture
def gateway_factory(short_tmp: Path) -> Iterator[Callable[..., RunningGateway]]:
    """Write a config dir and start a gateway on it: factory(gateway_toml, adapters={name: toml}, files={})."""
    started: list[RunningGateway] = []

    def factory(gateway_toml: str = MINIMAL_GATEWAY, adapters: dict[str, str] | None = None,
                files: dict[str, str] | None = None, expect: tuple[str, ...] = ("broker", "core")) -> RunningGateway:
        index = len(started)
        config = short_tmp / f"etc{index}"
        (config / "adapters").mkdir(parents=True)
        (config / "gateway.toml").write_text(gateway_toml)
        for name, text in (adapters or {}).items():
            (config / "adapters" / f"{name}.toml").write_text(text)
        for relative, text in (files or {}).items():
            (config / relative).parent.mkdir(parents=True, exist_ok=True)
            (config / relative).write_text(text)
        gw = start_gateway(config, short_tmp / f"s{index}", expect)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()
        gw.kill_leftovers()
