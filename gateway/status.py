"""`millgate status`: every supervised process's state, pid, uptime and restart count (supervisord's
XML-RPC on its unix socket, through the time-bounded proxy every caller of supervisord uses), whether
the broker answers a login, and each component's own retained heartbeat with the metrics it reports.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import pwd
import socket
import threading
import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.acl import OPERATOR
from gateway.credentials import load_credentials
from gateway.mqtt_blocking import MqttError, connect_blocking, paho_client
from gateway.paths import GatewayPaths
from gateway.topics import STATUS_FILTER, status_component

BROKER_PROBE_TIMEOUT_S = 2.0
RETAINED_QUIET_S = 0.15
# every supervisord call answers well within this (a stop or start with wait=True too: stopwaitsecs and
# startsecs are 1-2 s, gateway/supervisor_config.py); past it supervisord is stuck, not busy
SUPERVISOR_TIMEOUT_S = 10.0


@dataclass
class ProcessStatus:
    state: str
    pid: int | None
    uptime_s: float | None
    restarts: int
    description: str
    uid: int | None = None  # what it runs as (a component uid has no account name: see component-uids.json)


@dataclass
class StatusReport:
    supervisor_reachable: bool
    processes: dict[str, ProcessStatus] = field(default_factory=dict)
    broker_reachable: bool = False
    broker_error: str | None = None
    supervisor_error: str | None = None
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "supervisor": {"reachable": self.supervisor_reachable, "error": self.supervisor_error},
            "processes": {name: asdict(p) for name, p in self.processes.items()},
            "broker": {"reachable": self.broker_reachable, "error": self.broker_error},
            "components": self.components,
        }


class SupervisorTimeout(TimeoutError):
    """supervisord did not take the connection or answer within the timeout: there, but stuck."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout_s: float):
        super().__init__("localhost", timeout=timeout_s)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class SupervisorSocketTransport(xmlrpc.client.Transport):
    """XML-RPC to supervisord over its unix socket, every connect, send and read bounded by `timeout_s`
    (supervisor's own SupervisorTransport has no timeout: a stuck supervisord hung its callers)."""

    def __init__(self, socket_path: Path, timeout_s: float = SUPERVISOR_TIMEOUT_S):
        super().__init__()
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # the override xmlrpc.client's documentation shows (ProxiedTransport): cache it as _connection
        cached_host, connection = self._connection
        if connection is None or cached_host != host:
            connection = _UnixHTTPConnection(self.socket_path, self.timeout_s)
            self._connection = host, connection
        return connection

    def request(self, host: Any, handler: str, request_body: Any, verbose: bool = False) -> Any:
        try:
            return super().request(host, handler, request_body, verbose)
        except TimeoutError as exc:
            raise SupervisorTimeout(
                f"supervisord at {self.socket_path} did not answer within {self.timeout_s:g} s"
            ) from exc


def supervisor_proxy(paths: GatewayPaths, timeout_s: float = SUPERVISOR_TIMEOUT_S) -> Any:
    transport = SupervisorSocketTransport(paths.supervisor_socket, timeout_s)
    return xmlrpc.client.ServerProxy("http://localhost", transport=transport)


def _processes(paths: GatewayPaths) -> dict[str, ProcessStatus]:
    proxy = supervisor_proxy(paths)
    infos = proxy.supervisor.getAllProcessInfo()
    restarts = proxy.millgate.getRestartCounts()
    result = {}
    for info in infos:
        running = info["statename"] in ("RUNNING", "STOPPING")
        result[info["name"]] = ProcessStatus(
            state=info["statename"],
            pid=info["pid"] or None,
            uptime_s=float(info["now"] - info["start"]) if running and info["start"] else None,
            restarts=int(restarts.get(info["name"], 0)),
            description=info["description"],
            uid=_uid_of(info["pid"]) if info["pid"] else None,
        )
    return result


def _uid_of(pid: int) -> int | None:
    """The effective uid of a process, None if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[2]) for line in lines if line.startswith("Uid:")), None)


def _user_name(uid: int | None) -> str:
    if uid is None:
        return "-"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def read_component_status(paths: GatewayPaths) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Every component's retained heartbeat (its own metrics included), and None; or ({}, why not)."""
    try:
        creds = load_credentials(paths.credentials_dir, OPERATOR)
    except OSError as exc:
        return {}, f"operator credentials unreadable: {exc.strerror}"
    client = paho_client(creds, f"operator-status-{os.getpid()}")
    found: dict[str, dict[str, Any]] = {}
    subscribed = threading.Event()
    last_message = [time.monotonic()]

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        last_message[0] = time.monotonic()
        component = status_component(message.topic)
        try:
            status = json.loads(message.payload)
        except ValueError:
            return
        # a heartbeat speaks for the component whose topic it is on, never for another one
        if component is not None and isinstance(status, dict) and status.get("component") == component:
            found[component] = status

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        connect_blocking(client, paths.broker_socket, BROKER_PROBE_TIMEOUT_S)
    except MqttError as exc:
        return {}, str(exc)
    try:
        client.subscribe(STATUS_FILTER, qos=1)
        subscribed.wait(BROKER_PROBE_TIMEOUT_S)
        # retained messages follow the SUBACK at once; stop after a short quiet spell
        last_message[0] = time.monotonic()
        while time.monotonic() - last_message[0] < RETAINED_QUIET_S:
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()
    return found, None


def gather_status(paths: GatewayPaths) -> StatusReport:
    try:
        report = StatusReport(True, _processes(paths))
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError) as exc:
        report = StatusReport(False, supervisor_error=_supervisor_problem(paths.supervisor_socket, exc))
    report.components, report.broker_error = read_component_status(paths)
    report.broker_reachable = report.broker_error is None
    return report


def _supervisor_problem(socket_path: Path, exc: Exception) -> str:
    """What the operator is told when supervisord cannot be asked: not running is one case of several."""
    if isinstance(exc, SupervisorTimeout):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot query supervisord at {socket_path}: permission denied; run as root"
    if isinstance(exc, OSError):
        return f"gateway not running: supervisord at {socket_path}: {exc.strerror or exc}"
    return f"supervisord at {socket_path}: {exc}"


_HEARTBEAT_KEYS = frozenset({"component", "state", "pid", "started_at", "uptime_s", "ts"})


def render_status(report: StatusReport, as_json: bool) -> str:
    if as_json:
        return json.dumps(report.as_dict(), indent=2)
    if not report.supervisor_reachable:
        lines = [str(report.supervisor_error)]
    else:
        lines = [f"{'PROCESS':<24} {'STATE':<10} {'PID':>7} {'USER':<10} {'UPTIME':>10} {'RESTARTS':>8}"]
        for name, p in sorted(report.processes.items()):
            uptime = f"{p.uptime_s:.0f}s" if p.uptime_s is not None else "-"
            user = _user_name(p.uid)
            lines.append(f"{name:<24} {p.state:<10} {p.pid or '-':>7} {user:<10} {uptime:>10} {p.restarts:>8}")
    broker = "reachable" if report.broker_reachable else f"NOT reachable ({report.broker_error})"
    lines.append(f"broker: {broker}")
    for name, status in sorted(report.components.items()):
        details = {k: v for k, v in status.items() if k not in _HEARTBEAT_KEYS}
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in details.items())
        lines.append(f"  {name}: {status.get('state')} {shown}".rstrip())
    return "\n".join(lines)
