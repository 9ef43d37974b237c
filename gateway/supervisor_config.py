"""Renders supervisord.conf: the broker, the core and every other component as supervised programs,
with restart on crash, stop bands and deadlines that keep a whole shutdown under 10 s, and each program's
stdout captured into log_dir/system/<program>.log under a size cap.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gateway.acl import UPLINK, adapter_component, function_component, needs_uplink
from gateway.config import GatewayConfig
from gateway.config_loader import LoadedConfig
from gateway.paths import GatewayPaths
from gateway.service_user import ServiceUser

FINGERPRINT_ENV = "MILLGATE_CONFIG_FINGERPRINT"
LOGSHIP = "logship"  # ships logs to CloudWatch; no broker identity, no heartbeat
LOG_BACKUPS = 4
# Shutdown: supervisord stops one process group at a time and every program is a group of its own
# (a deployment adds, removes and restarts each alone), so gateway/supervisor_stop.py regroups the stop
# into bands by priority floor, each band's programs stopped together: producers (functions,
# adapters, logship) first so the uplink still takes their last messages, then uplink and core, then
# the broker, which saves its persistence file once every client has left. supervisord SIGKILLs what
# outlives a band's stop deadline (it checks about once a second), so a band takes at most
# deadline + 1 s and a whole gateway at most SHUTDOWN_WORST_S, under 10 s (systemd allows 20).
STOP_BANDS: tuple[tuple[int, int], ...] = ((40, 2), (20, 2), (0, 2))  # (priority floor, stopwaitsecs)
SHUTDOWN_WORST_S = sum(wait + 1 for _, wait in STOP_BANDS)


def stop_wait_s(priority: int) -> int:
    return next(wait for floor, wait in STOP_BANDS if priority >= floor)


@dataclass(frozen=True)
class Program:
    name: str
    command: list[str]
    priority: int
    umask: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    # The core and long-lived functions stay root: the core spawns workers under the functions'
    # uids, a long-lived function drops to its own uid itself before any user code runs.
    as_service_user: bool = True
    log_file: Path | None = None  # default: log_dir/system/<name>.log
    log_max_bytes: int | None = None  # default: logging.max_bytes_per_component
    # exit codes that mean "stopped on purpose, do not restart" (3: the uplink's spool or the core's
    # shadows.db cannot be used)
    exit_codes: str = "0"
    # the config slices this program reads (gateway/deploy_plan.py): a new value makes supervisord's
    # reloadConfig see the program as changed, so a deployment restarts it and nothing else
    fingerprint: str = ""


def _escape(value: str) -> str:
    return value.replace("%", "%%")


def python_component(module: str, paths: GatewayPaths, *extra: str) -> list[str]:
    return [sys.executable, "-m", module, "--config", str(paths.config_dir), "--state", str(paths.state_dir), *extra]


def programs(loaded: LoadedConfig, paths: GatewayPaths, mosquitto: Path) -> list[Program]:
    """Every process the gateway runs, in start order."""
    found = [
        # the socket must be connectable by function workers running under their own uids
        Program("broker", [str(mosquitto), "-c", str(paths.mosquitto_conf)], priority=10, umask="000"),
        Program("core", python_component("gateway.core", paths), priority=20, as_service_user=False, exit_codes="0,3"),
    ]
    if needs_uplink(loaded.gateway):
        found.append(Program(UPLINK, python_component("gateway.uplink", paths), priority=30, exit_codes="0,3"))
    for function in loaded.gateway.functions:
        if function.lifecycle == "long-lived":
            command = python_component("functions.pinned", paths, "--name", function.name)
            found.append(
                Program(
                    function_component(function.name),
                    command,
                    priority=50,
                    as_service_user=False,
                    log_file=paths.function_log(function.name),
                    log_max_bytes=int(function.log_max_bytes),
                )
            )
    for name, adapter in sorted(loaded.adapters.items()):
        module = f"adapters.{adapter.config.protocol}"
        found.append(Program(adapter_component(name), python_component(module, paths, "--name", name), priority=40))
    cloudwatch = loaded.gateway.logging.cloudwatch
    if cloudwatch is not None and cloudwatch.enabled:
        found.append(Program(LOGSHIP, python_component("gateway.cloudwatch_ship", paths), priority=60))
    return found


def _per_file(cap: int) -> int:
    """Each of the LOG_BACKUPS + 1 files' share of a cap on all of them together."""
    return max(cap // (LOG_BACKUPS + 1), 1024)


def supervisord_conf_text(
    config: GatewayConfig, paths: GatewayPaths, user: ServiceUser, program_list: list[Program]
) -> str:
    per_file = _per_file(int(config.logging.max_bytes_per_component))
    run_as = f"user={user.name}" if user.uid != 0 and os.geteuid() == 0 else ""
    sections = [
        "; Generated by millgate from gateway.toml; edits are overwritten on every start.",
        "[unix_http_server]",
        f"file={_escape(str(paths.supervisor_socket))}",
        "chmod=0700",
        "",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={_escape(str(paths.component_log('supervisord')))}",
        f"logfile_maxbytes={per_file}",
        f"logfile_backups={LOG_BACKUPS}",
        f"pidfile={_escape(str(paths.run_dir / 'supervisord.pid'))}",
        f"childlogdir={_escape(str(paths.system_log_dir))}",
        f"identifier=millgate:{config.gateway.thing_name}",
        "loglevel=info",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[rpcinterface:millgate]",
        "supervisor.rpcinterface_factory = gateway.restart_counter:make_interface",
        "",
        "[rpcinterface:preload]",
        "supervisor.rpcinterface_factory = gateway.preload:install",
        "",
        "[rpcinterface:stopbands]",
        "supervisor.rpcinterface_factory = gateway.supervisor_stop:install",
        "floors = " + ",".join(str(floor) for floor, _ in STOP_BANDS if floor > 0),
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_escape(str(paths.supervisor_socket))}",
        "",
    ]
    for program in program_list:
        env = {"PYTHONUNBUFFERED": "1", "MILLGATE_COMPONENT": program.name, **program.environment}
        if program.fingerprint:
            env[FINGERPRINT_ENV] = program.fingerprint
        sections += [
            f"[program:{program.name}]",
            f"command={_escape(shlex.join(program.command))}",
            f"priority={program.priority}",
            "autostart=true",
            "autorestart=unexpected",
            f"exitcodes={program.exit_codes}",
            "startsecs=1",
            "startretries=10",
            "stopsignal=TERM",
            f"stopwaitsecs={stop_wait_s(program.priority)}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_escape(str(program.log_file or paths.component_log(program.name)))}",
            f"stdout_logfile_maxbytes={_per_file(program.log_max_bytes) if program.log_max_bytes else per_file}",
            f"stdout_logfile_backups={LOG_BACKUPS}",
            "environment=" + ",".join(f'{k}="{_escape(v)}"' for k, v in env.items()),
        ]
        if program.umask:
            sections.append(f"umask={program.umask}")
        if run_as and program.as_service_user:
            sections.append(run_as)
        sections.append("")
    return "\n".join(sections)
