"""`make demo`: runs the gateway on the embedded demo plant (etc/demo) with a state dir under ./var,
prints what happens on the local broker, and stops everything on Ctrl-C (or after DEMO_SECONDS).

It starts processes and reads the broker as the operator; it is not part of a production gateway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho

from gateway.config_loader import ConfigInvalid, load_config
from gateway.credentials import load_credentials
from gateway.mqtt import MqttError, connect_blocking, paho_client
from gateway.paths import GatewayPaths
from gateway.status import gather_status, render_status

CONFIG = Path("etc/demo")
STATE = Path("var")
START_TIMEOUT_S = 30.0
NON_INTERACTIVE_SECONDS = 20.0


def _millgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args, "--config", str(CONFIG), "--state", str(STATE)]


def _wait_until_up(paths: GatewayPaths, gateway: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit(f"demo: `millgate run` exited with {gateway.returncode}; see {paths.system_log_dir}")
        if paths.supervisor_socket.exists():
            report = gather_status(paths)
            if report.broker_reachable and all(p.state == "RUNNING" for p in report.processes.values()):
                print(render_status(report, as_json=False), flush=True)
                return
        time.sleep(0.3)
    raise SystemExit(f"demo: the gateway did not come up in {START_TIMEOUT_S:.0f} s; see {paths.system_log_dir}")


def _describe(message: paho.MQTTMessage) -> str:
    payload = message.payload.decode("utf-8", errors="backslashreplace")
    try:
        data = json.loads(payload)
    except ValueError:
        return f"{message.topic}  {payload}"
    if message.topic.endswith("/status") and isinstance(data, dict):
        extra = {k: v for k, v in data.items() if k not in ("component", "state", "pid", "started_at", "ts")}
        return f"{message.topic}  {data.get('state')} pid={data.get('pid')} {json.dumps(extra)}"
    return f"{message.topic}  {payload}"


def _watch(paths: GatewayPaths) -> paho.Client:
    client = paho_client(load_credentials(paths.credentials_dir, "operator"), "operator-demo")
    client.on_message = lambda _c, _u, m: print(_describe(m), flush=True)
    connect_blocking(client, paths.broker_socket)
    client.subscribe([("millgate/#", 1), ("$aws/things/#", 1)])
    for name in load_config(CONFIG).adapters:
        client.subscribe(f"{name}/#", 1)
    return client


def main() -> int:
    try:
        loaded = load_config(CONFIG)
    except ConfigInvalid as exc:
        print(f"demo: etc/demo is invalid:\n{exc}", file=sys.stderr)
        return 2
    paths = GatewayPaths.resolve(CONFIG, STATE, loaded.gateway.gateway.log_dir)
    seconds = float(os.environ.get("DEMO_SECONDS", "0")) or (None if sys.stdout.isatty() else NON_INTERACTIVE_SECONDS)
    print(f"demo: starting millgate on {CONFIG}/ (state in {STATE}/, logs in {paths.system_log_dir}/)", flush=True)
    gateway = subprocess.Popen(_millgate("run"), stdout=subprocess.DEVNULL, start_new_session=True)
    watcher = None
    try:
        _wait_until_up(paths, gateway)
        watcher = _watch(paths)
        print("demo: live messages follow" + ("; Ctrl-C to stop" if seconds is None else f" for {seconds:.0f} s"))
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            if gateway.poll() is not None:
                print(f"demo: gateway exited unexpectedly ({gateway.returncode})", file=sys.stderr)
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except MqttError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if watcher is not None:
            watcher.disconnect()
            watcher.loop_stop()
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(15)
    print(f"demo: stopped cleanly (exit {gateway.returncode})")
    return 0 if gateway.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
