"""`make demo`: the whole product on the embedded demo plant (etc/demo): simulated equipment, the
gateway, a local mosquitto standing in for AWS IoT. It walks through the scenes an operator cares about
and stops everything on Ctrl-C or after DEMO_SECONDS. Not part of a production gateway.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from gateway.config_loader import ConfigInvalid, LoadedConfig, load_config
from gateway.credentials import load_credentials
from gateway.demo_cloud import DemoCloud, LineProxy, make_cloud_pki
from gateway.mqtt_blocking import MqttError, connect_blocking, paho_client
from gateway.paths import GatewayPaths
from gateway.status import gather_status, read_component_status, render_status

CONFIG = Path("etc/demo")
STATE = Path(os.environ.get("MILLGATE_DEMO_STATE", "var"))
START_TIMEOUT_S = 40.0
NON_INTERACTIVE_SECONDS = 45.0
SIMULATORS = {
    "modbus": (["adapters.modbus.simulator", "--host", "127.0.0.1", "--port", "15020"], 15020),
    "opcua": (["adapters.opcua.simulator", "--port", "14840"], 14840),
}
SIMULATOR_START_S = 15.0
CLOUD_PORT = 18885
COMMAND_TOPICS = ("/set", "/set/result", "/call", "/call/result")  # not plant data (line2/setpoint is)


class Watch:
    """The operator's view of the local broker: the latest message on every topic, and counts."""

    def __init__(self, paths: GatewayPaths, filters: list[str]):
        self.latest: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.client = paho_client(load_credentials(paths.credentials_dir, "operator"), f"operator-demo-{os.getpid()}")
        self.client.on_message = self._on_message
        connect_blocking(self.client, paths.broker_socket)
        self.client.subscribe([(f, 1) for f in filters])

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            value: Any = json.loads(message.payload)
        except ValueError:
            value = message.payload.decode(errors="replace")
        with self.lock:
            self.latest[message.topic] = value
            self.counts[message.topic] = self.counts.get(message.topic, 0) + 1

    def matching(self, prefix: str) -> dict[str, Any]:
        with self.lock:
            return {t: v for t, v in sorted(self.latest.items()) if t.startswith(prefix)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class CloudCounter:
    """A subscriber on the demo cloud: how many messages arrived there, in all and by first topic level,
    and the latest one on each topic."""

    def __init__(self, cloud: DemoCloud):
        self.total = 0
        self.by_level: dict[str, int] = {}
        self.with_value: dict[str, int] = {}  # by first topic level: JSON objects with a "value" key
        self.latest: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="demo-cloud-watcher", protocol=paho.MQTTv5
        )
        context = ssl.create_default_context(cafile=str(cloud.pki.ca))
        context.load_cert_chain(str(cloud.pki.client_cert), str(cloud.pki.client_key))
        self.client.tls_set_context(context)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("#", 1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect_async("localhost", cloud.port)
        self.client.reconnect_delay_set(1, 2)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            value: Any = json.loads(message.payload)
        except ValueError:
            value = message.payload.decode(errors="replace")
        level = message.topic.split("/", 1)[0]
        with self.lock:
            self.total += 1
            self.by_level[level] = self.by_level.get(level, 0) + 1
            if isinstance(value, dict) and "value" in value:
                self.with_value[level] = self.with_value.get(level, 0) + 1
            self.latest[message.topic] = value

    def matching(self, prefix: str) -> dict[str, Any]:
        with self.lock:
            return {t: v for t, v in sorted(self.latest.items()) if t.startswith(prefix)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def scene(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _start_scenery(loaded: LoadedConfig, logs: Path) -> list[subprocess.Popen[bytes]]:
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    for protocol in sorted({a.config.protocol for a in loaded.adapters.values()}):
        module, port = SIMULATORS[protocol]
        log = (logs / f"simulator-{protocol}.log").open("ab")
        started.append(subprocess.Popen([sys.executable, "-m", *module], stdout=log, stderr=log))
        print(f"demo: simulated {protocol} equipment: python -m {' '.join(module)}", flush=True)
        _wait_for_port(port)
    return started


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + SIMULATOR_START_S
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    print(f"demo: nothing answers on 127.0.0.1:{port} yet; the adapter will retry")


def _wait_until_up(paths: GatewayPaths, gateway: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit(f"demo: `millgate run` exited with {gateway.returncode}; see {paths.system_log_dir}")
        if paths.supervisor_socket.exists():
            report = gather_status(paths)
            states = {name: p.state for name, p in report.processes.items()}
            if report.broker_reachable and states and all(s == "RUNNING" for s in states.values()):
                print(render_status(report, as_json=False).split("\nbroker:")[0], flush=True)
                return
        time.sleep(0.5)
    print(render_status(gather_status(paths), as_json=False))
    print(f"demo: not every process is RUNNING after {START_TIMEOUT_S:.0f} s; see {paths.system_log_dir}")


def _uplink(paths: GatewayPaths) -> dict[str, Any]:
    components, _ = read_component_status(paths)
    return components.get("uplink", {})


def _show_plant_data(watch: Watch, loaded: LoadedConfig) -> None:
    time.sleep(3)
    for name in loaded.adapters:
        values = {t: v for t, v in watch.matching(f"{name}/").items() if not t.endswith(COMMAND_TOPICS)}
        for topic, value in values.items():
            print(f"  {topic:<42} {json.dumps(value)}")
        updates = sum(watch.counts.get(topic, 0) for topic in values)
        print(f"  {name}: {updates} messages on {len(values)} topics in the first 3 s")


def _write_round_trip(watch: Watch, topic: str, value: int, log_hint: str) -> None:
    print(f'  operator publishes {{"value": {value}}} on {topic}')
    watch.client.publish(topic, json.dumps({"value": value}), qos=1)
    for _ in range(50):
        result = watch.matching(f"{topic}/result")
        if result:
            print(f"  {topic}/result -> {json.dumps(next(iter(result.values())))}")
            return
        time.sleep(0.1)
    print(f"  no /set/result within 5 s (see {log_hint})")


def _opcua_write_lands(watch: Watch, node_topic: str, value: int) -> None:
    """The node's own publication, from the server's data-change notification, shows the written value."""
    for _ in range(50):
        published = watch.matching(node_topic).get(node_topic)
        if isinstance(published, dict) and published.get("value") == value:
            print(f"  {node_topic} now -> {json.dumps(published)}  (the server's notification of the write)")
            return
        time.sleep(0.1)
    print(f"  {node_topic} did not show {value} within 5 s (see log/system/adapter-line2.log)")


def _offline_then_drain(paths: GatewayPaths, line: LineProxy, counter: CloudCounter) -> None:
    for _ in range(3):
        time.sleep(2)
        uplink = _uplink(paths)
        spool, link = uplink.get("spool", {}), uplink.get("cloud", {})
        print(
            f"  cloud {link.get('state', '?'):<12} spooled {spool.get('messages', '?'):>6} messages "
            f"({spool.get('bytes', '?')} bytes), oldest {spool.get('oldest_age_s', '?')} s"
        )
    scene("6. The line comes back: the spool drains, in order, into the cloud")
    line.up()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(2)
        uplink = _uplink(paths)
        spool = uplink.get("spool", {})
        print(
            f"  cloud {uplink.get('cloud', {}).get('state', '?'):<12} spooled {spool.get('messages', '?'):>6}"
            f"  drained {uplink.get('drained_total', '?'):>6}  arrived at the cloud {counter.total:>6}"
        )
        if uplink.get("cloud", {}).get("connected") and spool.get("messages", 1) < 20:
            break


FUNCTION_FIGURES = ("function_state", "workers", "invocations", "errors", "p50_ms", "p99_ms")


def _function_figures(paths: GatewayPaths, name: str) -> str:
    components, _ = read_component_status(paths)
    figures = components.get(f"fn-{name}", {})
    return f"fn-{name} " + " ".join(f"{k}={figures.get(k)}" for k in FUNCTION_FIGURES)


def _show_masking(paths: GatewayPaths, counter: CloudCounter) -> None:
    """What the cloud got from press-01: the mask's metadata, none of it with a value, and no raw reading."""
    print("  " + _function_figures(paths, "mask"))
    meta = counter.matching("meta/")
    with counter.lock:
        arrived, with_value = counter.by_level.get("meta", 0), counter.with_value.get("meta", 0)
        raw = counter.by_level.get("line1", 0)
    print(
        f"  at the cloud: {arrived} metadata messages on {len(meta)} meta/ topics, {with_value} of them "
        f"with a value; {raw} raw line1/ messages"
    )
    topic = "meta/press-01/temperature"
    if topic in meta:
        print(f"  latest at the cloud: {topic} {json.dumps(meta[topic])}")


def _show_function(paths: GatewayPaths, watch: Watch) -> None:
    print("  " + _function_figures(paths, "anomaly"))
    alerts = watch.matching("alerts/")
    print(
        f"  alerts seen on the broker: {sum(watch.counts.get(t, 0) for t in alerts)}"
        + (f", latest {json.dumps(next(iter(alerts.values())))}" if alerts else "")
    )


def _run_scenes(
    loaded: LoadedConfig,
    paths: GatewayPaths,
    gateway: subprocess.Popen[bytes],
    line: LineProxy,
    counter: CloudCounter,
    deadline: float | None,
) -> None:
    scene("1. The processes (millgate status)")
    _wait_until_up(paths, gateway)
    watch = Watch(paths, ["line1/#", "line2/#", "alerts/#"])
    try:
        scene("2. Plant data: tags published as {value, quality, ts}")
        _show_plant_data(watch, loaded)
        scene("3. Commands to the press (Modbus) and to line 2 (OPC-UA), and their results")
        _write_round_trip(watch, "line1/press-01/speed_setpoint/set", 1500, "log/system/adapter-line1.log")
        _write_round_trip(watch, "line2/setpoint/set", 120, "log/system/adapter-line2.log")
        _opcua_write_lands(watch, "line2/setpoint", 120)
        scene("4. A device over mutual TLS, and an impostor refused")
        from gateway.demo_devices import show_device_tls

        show_device_tls(paths, loaded.gateway.broker.tls_port)
        scene("5. The line to the cloud is down: cloud-bound data waits in the spool on disk")
        _offline_then_drain(paths, line, counter)
        scene("7. The masking example (etc/examples/masking, as shipped): only metadata leaves the plant")
        _show_masking(paths, counter)
        scene("8. The on-demand function watching the temperature")
        _show_function(paths, watch)
        scene("The gateway keeps running" + ("; Ctrl-C stops it" if deadline is None else ""))
        while deadline is None or time.monotonic() < deadline:
            if gateway.poll() is not None:
                raise SystemExit(f"demo: gateway exited unexpectedly ({gateway.returncode})")
            time.sleep(0.5)
    finally:
        watch.close()


def main() -> int:
    try:
        loaded = load_config(CONFIG)
    except ConfigInvalid as exc:
        print(f"demo: etc/demo is invalid:\n{exc}", file=sys.stderr)
        return 2
    paths = GatewayPaths.resolve(CONFIG, STATE, loaded.gateway.gateway.log_dir)
    seconds = float(os.environ.get("DEMO_SECONDS", "0")) or (None if sys.stdout.isatty() else NON_INTERACTIVE_SECONDS)
    deadline = None if seconds is None else time.monotonic() + seconds
    assert loaded.gateway.cloud is not None, "the demo config routes data to its stand-in cloud"
    pki = make_cloud_pki(CONFIG / "certs", loaded.gateway.gateway.thing_name)
    # the cloud runs from the start on its own port; the gateway reaches it through a line we cut and restore
    cloud = DemoCloud(pki, STATE / "demo-cloud", CLOUD_PORT)
    line = LineProxy(loaded.gateway.cloud.port, CLOUD_PORT)
    cloud.start()
    print(f"demo: millgate on {CONFIG}/, state in {STATE}/, logs in {paths.system_log_dir}/", flush=True)
    scenery = _start_scenery(loaded, STATE / "demo-logs")
    command = [sys.executable, "-m", "gateway.cli", "run", "--config", str(CONFIG), "--state", str(STATE)]
    gateway = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        counter = CloudCounter(cloud)
        _run_scenes(loaded, paths, gateway, line, counter, deadline)
    except KeyboardInterrupt:
        pass
    except MqttError as exc:
        print(f"demo: {exc}", file=sys.stderr)
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(15)
        line.down()
        cloud.stop()
        for process in scenery:
            process.terminate()
            process.wait(5)
    print(f"\ndemo: stopped cleanly (gateway exit {gateway.returncode})")
    return 0 if gateway.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
