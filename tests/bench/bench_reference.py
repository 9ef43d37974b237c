"""The reference deployment (etc/reference) end to end, next to raw baselines measured in the same run:

- reference_start_s: `millgate run` to every component healthy (processes RUNNING, each heartbeat
  online, the cloud link up, both adapters' equipment up, the long-lived function ready, the first
  tag value at the cloud) vs supervisord starting the same number of bare interpreters.
- reference_pss_mb_idle / reference_pss_mb (under load): sum of PSS (/proc/<pid>/smaps_rollup) over
  every process of the deployment, supervisord and the broker included, on-demand workers too; the
  stand-ins (simulators, the cloud broker, moto) are not part of it. Baseline: the 128 MB budget.
- reference_pss_mb_idle_without_line1_uplink: the idle deployment again, after adapter-line1 and then
  the uplink are stopped outright: a lower bound for merging them into other processes.
- e2e_latency_p50_ms / e2e_latency_p99_ms: a tag change on the simulated press (the simulator writes
  the wall clock into the tag) to the message at the cloud broker, at 1,000 changes/s, while the
  OPC-UA line adds 1,000 items/s to S3 and the functions run. Baseline: a bare pymodbus poller at the
  same poll period publishing each changed value with paho straight to the same cloud broker.
- deploy_lost_messages / deploy_interruption_s: `millgate deploy` of a change to the anomaly
  function while a probe stream of sequenced readings goes through it to the cloud.

The ReferencePlant harness here is also what tests/chaos drives.
Run: `make bench`; the unmarked smoke runs the whole path for a few seconds with a reduced plant.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.credentials import load_credentials
from gateway.demo_cloud import DemoCloud, make_cloud_pki
from gateway.mqtt_blocking import connect_blocking, paho_client
from gateway.paths import GatewayPaths
from gateway.status import supervisor_proxy
from gateway.topics import STATUS_FILTER
from tests.bench.results import record
from tests.fixtures.gateway import REPO, free_port, wait_until
from tests.uplink.conftest import LinkProxy

REFERENCE = REPO / "etc" / "reference"
BUDGET_MB = 128.0
CLOCK_MOD = 2**32
# the ports etc/reference uses for its stand-ins, rewritten to free ones in each run
PORTS = {"modbus": 15502, "opcua": 14841, "cloud": 18894, "s3": 15000, "tls": 18893, "discovery": 18453}
PROBE_ROUTE = """
[[subscriptions]]            # the benchmark's probe: sequenced readings scored by the anomaly function
source = "device:probe"
target = "function:anomaly"
topic = "probe/temperature"
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


# ---- memory ------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += tree.get(pid, [])
    return found


def pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, StopIteration, ValueError), open(f"/proc/{pid}/smaps_rollup") as rollup:
        return int(next(line for line in rollup if line.startswith("Pss:")).split()[1])
    return 0


def process_label(pid: int) -> str:
    try:
        argv = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return "?"
    if len(argv) == 1:  # a process title (gateway/preload.py): the command line joined by spaces
        argv = argv[0].split()
    if not argv:
        return "?"
    text = " ".join(argv)
    if "supervisord" in text or "millgate run" in text or argv[0].endswith("millgate"):
        return "supervisord"
    if "mosquitto" in argv[0]:
        return "broker"
    if "--name" in argv:
        name = argv[argv.index("--name") + 1]
        module = argv[argv.index("-m") + 1] if "-m" in argv else ""
        return f"fn-{name}" if module.startswith("functions") else f"adapter-{name}"
    for module, label in (("gateway.core", "core"), ("gateway.uplink.s3_put", "s3-put"), ("gateway.uplink", "uplink")):
        if f"-m {module}" in text:
            return label
    if "functions." in text or "worker" in text:
        return "fn-worker"
    return Path(argv[0]).name or "?"


def deployment_pss(root: int) -> dict[str, float]:
    """MB of PSS per process of the tree under `root` (labels made unique), from smaps_rollup."""
    found: dict[str, float] = {}
    for pid in process_tree(root):
        label = process_label(pid)
        key, n = label, 1
        while key in found:
            n += 1
            key = f"{label}#{n}"
        found[key] = round(pss_kb(pid) / 1024, 2)
    return found


# ---- the cloud side ------------------------------------------------------------------------------


@dataclass
class CloudWatcher:
    """A TLS subscriber on the cloud broker: clock-tag latencies, probe scores, counts per route."""

    cloud: DemoCloud
    topic_filter: str = "#"
    latencies_ms: list[float] = field(default_factory=list)
    probe: dict[int, float] = field(default_factory=dict)  # seq -> first arrival (monotonic)
    duplicates: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of every line1 clock message
    keep_arrivals: bool = False
    first_clock: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: paho.Client | None = None

    def start(self) -> None:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"bench-cloud-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5
        )
        context = ssl.create_default_context(cafile=str(self.cloud.pki.ca))
        context.load_cert_chain(str(self.cloud.pki.client_cert), str(self.cloud.pki.client_key))
        client.tls_set_context(context)
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_connect = lambda c, *_: c.subscribe(self.topic_filter, qos=1)
        client.reconnect_delay_set(0.2, 1)
        client.connect_async("localhost", self.cloud.port)
        client.loop_start()
        self.client = client
        assert subscribed.wait(15), "could not subscribe on the cloud broker"

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def reset(self) -> None:
        with self.lock:
            self.latencies_ms.clear()
            self.arrivals.clear()
            self.counts.clear()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        now_ms = time.time() * 1000
        topic = message.topic
        route = topic.split("/", 1)[0]
        with self.lock:
            self.counts[route] = self.counts.get(route, 0) + 1
            if "/clock_" in topic:
                try:
                    value = int(json.loads(message.payload)["value"])
                except (ValueError, KeyError, TypeError):
                    return
                if value == 0:  # a register the simulator has not written yet
                    return
                self.latencies_ms.append((int(now_ms) - value) % CLOCK_MOD)
                if self.keep_arrivals:
                    self.arrivals.append(time.monotonic())
                self.first_clock.set()
            elif topic == "scores/temperature":
                seq = json.loads(message.payload).get("seq")
                if isinstance(seq, int):
                    if seq in self.probe:
                        self.duplicates += 1
                    else:
                        self.probe[seq] = time.monotonic()


# ---- the plant -----------------------------------------------------------------------------------


@dataclass
class PlantShape:
    modbus_rate: float = 1000.0  # clock tag changes per second (0: static equipment)
    opcua_period_s: float = 1.0  # seconds between changes of every OPC-UA item (3600: static)
    opcua_items: int = 1000
    modbus_tags: int = 1000


class ReferencePlant:
    """etc/reference copied under `root` with free ports, its stand-ins (Modbus and OPC-UA simulators,
    the cloud mosquitto behind a cuttable line, moto's S3 server) and `millgate run`. Everything it
    starts, it stops."""

    def __init__(self, root: Path, shape: PlantShape | None = None):
        self.root = root
        self.shape = shape or PlantShape()
        self.config = root / "etc"
        self.state = root / "s"
        self.cloud_port = free_port()  # the cloud listens here; the gateway dials the line (ports["cloud"])
        # the line to the cloud, cut and restored any number of times (gateway.demo_cloud.LineProxy
        # cannot rebind its port while its accept thread still holds the closed listener)
        self.line = LinkProxy(self.cloud_port)
        self.ports = {name: free_port() for name in PORTS} | {"cloud": self.line.port}
        self.standins: dict[str, subprocess.Popen[bytes]] = {}
        self.gateway: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._write_config()
        self.pki = make_cloud_pki(self.config / "certs", "reference-gw")
        self.cloud = DemoCloud(self.pki, root / "cloud", self.cloud_port)
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @property
    def paths(self) -> GatewayPaths:
        return GatewayPaths.resolve(self.config, self.state, None)

    def _write_config(self) -> None:
        shutil.copytree(REFERENCE, self.config, ignore=shutil.ignore_patterns("certs", "__pycache__"))
        self.root.chmod(0o755)
        for path in [self.config / "gateway.toml", *self.config.glob("adapters/*.toml")]:
            text = path.read_text()
            for name, port in PORTS.items():
                text = re.sub(rf"(?<![0-9]){port}(?![0-9])", str(self.ports[name]), text)
            if path.name == "gateway.toml":
                text += PROBE_ROUTE
            path.write_text(text)
        if self.shape.modbus_tags < 1000:
            csv = self.config / "adapters" / "press-registers.csv"
            csv.write_text("\n".join(csv.read_text().splitlines()[: self.shape.modbus_tags + 1]) + "\n")
        if self.shape.opcua_items < 1000:
            opcua = self.config / "adapters" / "opcua.toml"
            lines = opcua.read_text().splitlines()
            keep = [
                ln
                for ln in lines
                if not re.match(r'\s*\{ name = "b(\d+)"', ln)
                or int(ln.split('"b')[1].split('"')[0]) < self.shape.opcua_items
            ]
            opcua.write_text("\n".join(keep) + "\n")

    # ---- stand-ins

    def start_modbus(self, rate: float | None = None) -> None:
        rate = self.shape.modbus_rate if rate is None else rate
        argv = ["adapters.modbus.simulator", "--port", str(self.ports["modbus"])]
        if rate:
            argv += ["--clock-tags", str(self.shape.modbus_tags), "--clock-rate", str(rate)]
        self._standin("modbus", argv, self.ports["modbus"])

    def start_opcua(self, period_s: float | None = None) -> None:
        period = self.shape.opcua_period_s if period_s is None else period_s
        argv = ["adapters.opcua.simulator", "--port", str(self.ports["opcua"]), "--items", str(self.shape.opcua_items)]
        self._standin("opcua", [*argv, "--period", str(period)], self.ports["opcua"], timeout_s=60)

    def start_s3(self) -> None:
        self._standin("s3", ["moto.server", "-H", "127.0.0.1", "-p", str(self.ports["s3"])], self.ports["s3"])

        self._s3().create_bucket(Bucket="plant-raw")

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def _s3(self) -> Any:
        import boto3  # only the harness holds boto3, never a gateway process

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def _standin(self, name: str, argv: list[str], port: int, timeout_s: float = 20) -> None:
        self.stop_standin(name)
        log = (self.root / f"{name}.log").open("ab")
        self.standins[name] = subprocess.Popen(
            [sys.executable, "-m", *argv], stdout=log, stderr=log, cwd=REPO, env=self.env, start_new_session=True
        )
        log.close()

        def listening() -> bool:
            import socket

            assert self.standins[name].poll() is None, f"{name} stand-in exited: see {self.root}/{name}.log"
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, timeout_s, f"the {name} stand-in on {port}", interval_s=0.1)

    def stop_standin(self, name: str, kill: bool = False) -> None:
        process = self.standins.pop(name, None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def start_standins(self) -> None:
        self.cloud.workdir.mkdir(parents=True, exist_ok=True)
        self.cloud.start()
        self.line.up()
        self.start_s3()
        self.start_modbus()
        self.start_opcua()

    # ---- the gateway

    def run(self) -> None:
        """`millgate run`, in its own session (so a power cut can take the whole tree)."""
        millgate = str(Path(sys.executable).parent / "millgate")
        argv = [millgate, "run", "--config", str(self.config), "--state", str(self.state)]
        with (self.root / "gateway.out").open("ab") as out:
            self.started_at = time.monotonic()
            self.gateway = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=self.env, start_new_session=True
            )

    def stop_gateway(self, timeout_s: float = 20) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                self.gateway.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.power_cut()
        self.gateway = None

    def power_cut(self) -> None:
        """kill -9 of every process of the deployment at once."""
        if self.gateway is None:
            return
        pids = process_tree(self.gateway.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.gateway.wait()
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids), 10, "the tree to die")
        self.gateway = None

    def stop(self) -> None:
        self.stop_gateway()
        for name in list(self.standins):
            self.stop_standin(name)
        self.line.close()
        self.cloud.stop()

    def pss(self) -> dict[str, float]:
        assert self.gateway is not None
        return deployment_pss(self.gateway.pid)

    def processes(self) -> dict[str, dict[str, Any]]:
        proxy = supervisor_proxy(self.paths)
        return {i["name"]: i for i in proxy.supervisor.getAllProcessInfo()}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Heartbeats:
    """The operator's view of every component's retained heartbeat, kept current."""

    def __init__(self, paths: GatewayPaths):
        self.latest: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        creds = load_credentials(paths.credentials_dir, "operator")
        self.client = paho_client(creds, f"bench-heartbeats-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(STATUS_FILTER, qos=1)
        connect_blocking(self.client, paths.broker_socket)
        self.client.subscribe(STATUS_FILTER, qos=1)

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            status = json.loads(message.payload)
            with self.lock:
                self.latest[str(status["component"])] = status

    def get(self, component: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.latest.get(component, {}))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def unhealthy(plant: ReferencePlant, beats: Heartbeats) -> list[str]:
    """What is not yet healthy in the deployment (empty: every component is)."""
    problems = []
    processes = plant.processes()
    for name, info in processes.items():
        if info["statename"] != "RUNNING":
            problems.append(f"{name} {info['statename']}")
    for name in processes:
        if name == "broker":
            continue
        beat = beats.get(name)
        if beat.get("state") != "online":
            problems.append(f"{name} heartbeat {beat.get('state')}")
    text = json.dumps({n: beats.get(n) for n in processes})
    if not beats.get("uplink").get("cloud", {}).get("connected"):
        problems.append("cloud link down")
    for adapter in ("adapter-line1", "adapter-line2"):
        devices = json.dumps(beats.get(adapter))
        if '"up"' not in devices and '"connected"' not in devices:
            problems.append(f"{adapter} equipment not up")
    if '"function_state": "ready"' not in text:
        problems.append("fn-aggregate not ready")
    return problems


def wait_healthy(plant: ReferencePlant, beats_box: list[Heartbeats], watcher: CloudWatcher, timeout_s: float) -> float:
    """Seconds from `millgate run` until every component is healthy and a tag value reached the cloud."""
    deadline = time.monotonic() + timeout_s
    last: list[str] = ["not started"]
    while time.monotonic() < deadline:
        assert plant.gateway is not None and plant.gateway.poll() is None, "millgate run exited"
        try:
            if not beats_box:
                beats_box.append(Heartbeats(plant.paths))
            last = unhealthy(plant, beats_box[0])
        except Exception as exc:  # supervisord or the broker not up yet: keep polling
            last = [f"{type(exc).__name__}: {exc}"]
        if not last and watcher.first_clock.is_set():
            return time.monotonic() - plant.started_at
        time.sleep(0.05)
    raise AssertionError(f"not healthy after {timeout_s} s: {last}; see {plant.state}/log")


# ---- baselines -----------------------------------------------------------------------------------


def supervisord_bare_start_s(root: Path, programs: int) -> float:
    """supervisord starting `programs` bare interpreters that each import paho, say so (a file) and sleep."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "supervisord.conf"
    sock = root / "s.sock"
    lines = [
        "[unix_http_server]",
        f"file={sock}",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={root}/sd.log",
        f"pidfile={root}/sd.pid",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
    ]
    for n in range(programs):
        ready = f"open('{root}/ready{n}', 'w'); time.sleep(600)"
        lines += [
            f"[program:p{n}]",
            f'command={sys.executable} -c "import paho.mqtt.client, time; {ready}"',
            "startsecs=0",
            "stopsignal=KILL",
        ]
    conf.write_text("\n".join(lines) + "\n")
    supervisord = str(Path(sys.executable).parent / "supervisord")
    started = time.monotonic()
    process = subprocess.Popen(
        [supervisord, "-c", str(conf)], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        def all_running() -> bool:
            if not sock.exists():
                return False
            proxy = xmlrpc.client.ServerProxy("http://x", transport=SupervisorTransport(None, None, f"unix://{sock}"))
            try:
                infos = proxy.supervisor.getAllProcessInfo()
            except OSError:
                return False
            running = len(infos) == programs and all(i["statename"] == "RUNNING" for i in infos)
            return running and len(list(root.glob("ready*"))) == programs

        wait_until(all_running, 30, "bare supervisord programs", interval_s=0.02)
        return time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def bare_latency(plant: ReferencePlant, watcher: CloudWatcher, seconds: float, poll_s: float = 0.1) -> list[float]:
    """The raw path: a bare pymodbus client polling the clock registers every `poll_s`, publishing each
    changed value with paho at QoS 1 straight to the cloud broker over TLS."""
    from pymodbus.client import ModbusTcpClient

    tags = plant.shape.modbus_tags
    client = ModbusTcpClient("127.0.0.1", port=plant.ports["modbus"])
    assert client.connect()
    cloud = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5)
    context = ssl.create_default_context(cafile=str(plant.pki.ca))
    context.load_cert_chain(str(plant.pki.client_cert), str(plant.pki.client_key))
    cloud.tls_set_context(context)
    cloud.max_inflight_messages_set(100)
    cloud.max_queued_messages_set(0)
    cloud.connect("localhost", plant.cloud_port)
    cloud.loop_start()
    last: list[int] = [-1] * tags
    watcher.reset()
    deadline = time.monotonic() + seconds
    next_poll = time.monotonic()
    try:
        while time.monotonic() < deadline:
            registers: list[int] = []
            for start in range(0, 2 * tags, 124):
                count = min(124, 2 * tags - start)
                registers += client.read_holding_registers(1000 + start, count=count).registers
            for i in range(tags):
                value = registers[2 * i] << 16 | registers[2 * i + 1]
                if value != last[i]:
                    last[i] = value
                    payload = json.dumps({"value": value, "quality": "good", "ts": time.time()})
                    cloud.publish(f"bare/press/clock_{i:04d}", payload, qos=1)
            next_poll += poll_s
            time.sleep(max(next_poll - time.monotonic(), 0))
        time.sleep(1)
    finally:
        client.close()
        cloud.disconnect()
        cloud.loop_stop()
    with watcher.lock:
        return list(watcher.latencies_ms)


# ---- the deployment figure ------------------------------------------------------------------------


class Probe:
    """Sequenced readings on probe/temperature at `rate`/s through the anomaly function to the cloud."""

    def __init__(self, plant: ReferencePlant, rate: float):
        creds = load_credentials(plant.paths.credentials_dir, "operator")
        self.client = paho_client(creds, f"bench-probe-{uuid.uuid4().hex[:6]}")
        self.client.max_inflight_messages_set(1000)
        connect_blocking(self.client, plant.paths.broker_socket)
        self.rate = rate
        self.acked: list[int] = []
        self.stop = threading.Event()
        self.patience_s = 30.0  # how long to wait, at the end, for acknowledgements still on their way
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq, started = 0, time.monotonic()
        pending: list[tuple[int, paho.MQTTMessageInfo]] = []
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while seq < due:
                reading = {"value": 20.0 + (seq % 7) * 0.1, "quality": "good", "ts": time.time(), "seq": seq}
                pending.append((seq, self.client.publish("probe/temperature", json.dumps(reading), qos=1)))
                seq += 1
            time.sleep(0.005)
        deadline = time.monotonic() + self.patience_s  # for all of them together
        for number, info in pending:
            # a publication the broker never acknowledged (it was killed) raises: not sent, not counted
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(deadline - time.monotonic(), 0.01))
            with contextlib.suppress(RuntimeError):
                if info.is_published():
                    self.acked.append(number)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.client.disconnect()
        self.client.loop_stop()


def change_one_function(plant: ReferencePlant) -> None:
    gateway = plant.config / "gateway.toml"
    gateway.write_text(gateway.read_text().replace('THRESHOLD = "3.0"', 'THRESHOLD = "3.5"'))


def measure_deployment(plant: ReferencePlant, watcher: CloudWatcher, rate: float = 100, settle_s: float = 3) -> dict:
    """Loss and the longest gap in a sequenced probe stream through the anomaly function while
    `millgate deploy` changes that function."""
    probe = Probe(plant, rate)
    probe.thread.start()
    time.sleep(settle_s)
    change_one_function(plant)
    started = time.monotonic()
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "millgate"),
            "deploy",
            "--config",
            str(plant.config),
            "--state",
            str(plant.state),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=plant.env,
    )
    deploy_s = time.monotonic() - started
    time.sleep(settle_s)
    probe.close()
    sent = probe.acked
    with contextlib.suppress(AssertionError):  # what never arrives is the figure, not a failure
        wait_until(lambda: all(s in watcher.probe for s in sent), 15, "the probe stream to drain", interval_s=0.2)
    lost = [s for s in sent if s not in watcher.probe]
    times = sorted(t for s, t in watcher.probe.items() if s in set(sent))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "deploy_ok": result.returncode == 0,
        "deploy_output": (result.stdout + result.stderr)[-2000:],
        "deploy_s": deploy_s,
        "sent": len(sent),
        "delivered": len(sent) - len(lost),
        "lost": len(lost),
        "duplicated": watcher.duplicates,
        "interruption_s": max(gaps, default=0.0),
        "normal_gap_s": 1 / rate,
    }


# ---- the run ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def reference_plant(shape: PlantShape | None = None) -> Iterator[ReferencePlant]:
    root = Path(tempfile.mkdtemp(prefix="mgref", dir="/tmp"))
    plant = ReferencePlant(root, shape)
    try:
        yield plant
    finally:
        plant.stop()
        if os.environ.get("MILLGATE_BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def start_standins_and_cloud(plant: ReferencePlant, idle: bool) -> CloudWatcher:
    """The cloud, its line, S3 and the OPC-UA server (static values when `idle`); a watcher at the cloud."""
    plant.cloud.workdir.mkdir(parents=True, exist_ok=True)
    plant.cloud.start()
    plant.line.up()
    plant.start_s3()
    plant.start_opcua(period_s=3600 if idle else None)
    watcher = CloudWatcher(plant.cloud)
    watcher.start()
    return watcher


def run_until_healthy(plant: ReferencePlant, watcher: CloudWatcher, beats: list[Heartbeats], idle: bool) -> float:
    """The Modbus press (static when `idle`), then `millgate run`; seconds until every component is healthy."""
    plant.start_modbus(rate=0 if idle else None)
    watcher.first_clock.clear()
    plant.run()
    if idle:  # the first value of every clock tag (0) reaches the cloud too; count it as a first tag
        watcher.first_clock.set()
    return wait_healthy(plant, beats, watcher, 90)


def run_without(shape: PlantShape, stopped: list[str], settle_s: float, out: Callable[..., Any]) -> dict:
    """The idle deployment's PSS, then again after each program in `stopped` is stopped in turn (its work
    done nowhere): a lower bound for merging those programs into the others, which would do their work."""
    with reference_plant(shape) as plant:
        watcher = start_standins_and_cloud(plant, idle=True)
        beats: list[Heartbeats] = []
        run_until_healthy(plant, watcher, beats, idle=True)
        time.sleep(settle_s)
        steps = {"all": plant.pss()}
        supervisor = supervisor_proxy(plant.paths).supervisor
        for name in stopped:
            supervisor.stopProcess(name)
            time.sleep(settle_s / 3)
            steps[f"without {', '.join(stopped[: stopped.index(name) + 1])}"] = plant.pss()
        for beat in beats:
            beat.close()
        watcher.stop()
    totals = {step: round(sum(pss.values()), 2) for step, pss in steps.items()}
    name = "reference_pss_mb_idle_without_" + "_".join(n.removeprefix("adapter-") for n in stopped)
    out(
        name,
        list(totals.values())[-1],
        "MB",
        BUDGET_MB,
        "idle deployment with " + ", ".join(stopped) + " stopped, their work done nowhere: a lower bound "
        "for merging them into other processes; baseline: the 128 MB budget; "
        + "; ".join(f"{step}: {total}" for step, total in totals.items()),
    )
    return steps


def run_reference(
    shape: PlantShape, latency_s: float, idle_s: float, deploy: bool, out: Callable[..., Any], bare_s: float = 0
) -> dict:
    """Every reference figure; idle_s = 0 skips the idle phase (equipment starts under load), bare_s = 0
    skips the raw latency baseline, deploy = False the deployment figure."""
    figures: dict[str, Any] = {}
    with reference_plant(shape) as plant:
        # idle equipment first (values that do not change), unless the run skips the idle phase
        watcher = start_standins_and_cloud(plant, idle=bool(idle_s))
        bare: list[float] = []
        if bare_s:
            plant.start_modbus(rate=shape.modbus_rate)  # the raw baseline reads the same live press
            bare = bare_latency(plant, watcher, bare_s)
        beats: list[Heartbeats] = []
        start_s = run_until_healthy(plant, watcher, beats, idle=bool(idle_s))
        programs = len(plant.processes())
        bare_start = supervisord_bare_start_s(plant.root / "bare-sd", programs)
        figures["reference_start_s"] = out(
            "reference_start_s",
            start_s,
            "s",
            bare_start,
            f"`millgate run` to all {programs} programs RUNNING, heartbeats online, cloud link up, equipment up, "
            "first tag at the cloud; baseline: supervisord starting as many bare interpreters importing paho",
        )
        idle: dict[str, float] = {}
        if idle_s:
            time.sleep(idle_s)
            idle = plant.pss()
            figures["reference_pss_mb_idle"] = out(
                "reference_pss_mb_idle",
                sum(idle.values()),
                "MB",
                BUDGET_MB,
                "sum of PSS over every process of the deployment, equipment static; baseline: the 128 MB budget; "
                + " ".join(f"{k}={v}" for k, v in sorted(idle.items())),
            )
            # under load: 1,000 tag changes/s on the press, every OPC-UA item changing each period
            plant.start_opcua()
            plant.start_modbus()
            wait_until(lambda: not unhealthy(plant, beats[0]), 60, "the adapters to reconnect", interval_s=0.2)
        time.sleep(3 if idle_s else 1)
        watcher.reset()
        time.sleep(latency_s)
        with watcher.lock:
            latencies = list(watcher.latencies_ms)
        loaded = plant.pss()
        rate = len(latencies) / latency_s
        note = (
            f"simulated press tag change -> cloud broker, {rate:.0f} msg/s measured ({shape.modbus_tags} tags, "
            f"poll 100 ms) + {shape.opcua_items} OPC-UA items every {shape.opcua_period_s} s to S3 + functions; "
            "baseline: bare pymodbus poller at 100 ms + paho QoS 1 straight to the cloud broker"
        )
        assert latencies, "no clock tag reached the cloud"
        figures["e2e_latency_p50_ms"] = out(
            "e2e_latency_p50_ms", _percentile(latencies, 0.5), "ms", _percentile(bare, 0.5) if bare else None, note
        )
        figures["e2e_latency_p99_ms"] = out(
            "e2e_latency_p99_ms", _percentile(latencies, 0.99), "ms", _percentile(bare, 0.99) if bare else None, note
        )
        figures["reference_pss_mb"] = out(
            "reference_pss_mb",
            sum(loaded.values()),
            "MB",
            BUDGET_MB,
            f"under load ({rate:.0f} msg/s to the cloud); baseline: the 128 MB budget; "
            + " ".join(f"{k}={v}" for k, v in sorted(loaded.items())),
        )
        if deploy:
            outcome = measure_deployment(plant, watcher, settle_s=3 if idle_s else 1)
            note = (
                f"`millgate deploy` changing the anomaly function's environment during a 100 msg/s probe "
                f"through it to the cloud: sent {outcome['sent']}, delivered {outcome['delivered']}, "
                f"duplicated {outcome['duplicated']}, deploy took {outcome['deploy_s']:.1f} s"
                + ("" if outcome["deploy_ok"] else f"; DEPLOY FAILED: {outcome['deploy_output'][-300:]}")
            )
            figures["deploy_lost_messages"] = out("deploy_lost_messages", outcome["lost"], "msg", 0, note)
            figures["deploy_interruption_s"] = out(
                "deploy_interruption_s", outcome["interruption_s"], "s", outcome["normal_gap_s"], note
            )
            figures["deploy"] = outcome
        figures["pss_idle"], figures["pss_load"] = idle, loaded
        for beat in beats:
            beat.close()
        watcher.stop()
    return figures


def _print_pss(title: str, pss: dict[str, float]) -> None:
    print(f"\n{title}")
    for name, mb in sorted(pss.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24} {mb:8.2f} MB")
    print(f"  {'total':<24} {sum(pss.values()):8.2f} MB")


@pytest.mark.bench
@pytest.mark.timeout(540)
def test_bench_reference() -> None:
    figures = run_reference(PlantShape(), latency_s=30, idle_s=10, deploy=True, out=record, bare_s=20)
    _print_pss("PSS idle", figures["pss_idle"])
    _print_pss("PSS under load", figures["pss_load"])
    print(json.dumps(figures.get("deploy", {}), indent=2))


@pytest.mark.bench
@pytest.mark.timeout(180)
def test_bench_reference_memory_lower_bound() -> None:
    for step, pss in run_without(PlantShape(), ["adapter-line1", "uplink"], 10, record).items():
        _print_pss(f"PSS idle, {step}", pss)


def test_bench_reference_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A reduced plant for a few seconds, so the harness and every figure's code path stay working."""
    import tests.bench.results as results

    monkeypatch.setattr(results, "RESULTS", tmp_path / "results.json")
    shape = PlantShape(modbus_rate=100, opcua_period_s=1, opcua_items=20, modbus_tags=100)
    figures = run_reference(shape, latency_s=1.5, idle_s=0, deploy=True, out=results.record)
    assert figures["reference_pss_mb"]["value"] > 0
    assert figures["deploy"]["sent"] > 0, figures["deploy"]
    assert figures["e2e_latency_p50_ms"]["value"] > 0
    steps = run_without(shape, ["uplink"], 1.5, results.record)
    assert set(steps) == {"all", "without uplink"} and "uplink" not in steps["without uplink"], steps
