"""Assembles the on-demand function runtime inside the core: one pool per on-demand function, each
with its own broker connection under the function's identity (so the whitelist decides what reaches
it), its deployed code, its granted groups and its log.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from functions.dispatcher import FunctionPool
from functions.user_log import UserLog
from functions.worker_process import WorkerSpec
from gateway.acl import function_component, function_identity
from gateway.config import Function
from gateway.config_loader import LoadedConfig
from gateway.credentials import load_credentials
from gateway.function_deploy import DeployedFunction, read_manifest
from gateway.mqtt import LocalMqtt
from gateway.paths import GatewayPaths
from gateway.topics import invoke_topic

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def worker_environment(function: Function, paths: GatewayPaths, thing_name: str, code_dir: Path) -> dict[str, str]:
    return {
        "PATH": BASE_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(code_dir),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MILLGATE_FUNCTION": function.name,
        "MILLGATE_STATE": str(paths.state_dir),
        "AWS_IOT_THING_NAME": thing_name,
        **function.environment,
    }


def routed_filters(loaded: LoadedConfig, function: str) -> list[str]:
    return [s.topic for s in loaded.gateway.subscriptions if s.target == f"function:{function}"]


def build_pool(
    loaded: LoadedConfig, paths: GatewayPaths, function: Function, deployed: DeployedFunction, status_interval_s: float
) -> FunctionPool:
    thing = loaded.gateway.gateway.thing_name
    code_dir = Path(deployed.path)
    spec = WorkerSpec(
        function=function.name,
        version=deployed.version,
        code_dir=code_dir,
        handler=function.handler,
        thing_name=thing,
        uid=function.uid,
        gid=function.gid,
        extra_groups=deployed.extra_groups,
        memory_mb=function.memory_mb,
        environment=worker_environment(function, paths, thing, code_dir),
    )
    pool = FunctionPool(
        function, spec, UserLog(paths.function_log(function.name), int(function.log_max_bytes)), list(deployed.problems)
    )
    subscriptions = [(f, 1) for f in routed_filters(loaded, function.name)] + [(invoke_topic(function.name), 1)]
    pool.mqtt = LocalMqtt(
        paths.broker_socket,
        load_credentials(paths.credentials_dir, function_identity(function.name)),
        function_component(function.name),
        status_interval_s=status_interval_s,
        subscriptions=subscriptions,
        on_message=pool.on_message,
        status_fields=pool.status,
    )
    return pool


async def run_on_demand_functions(loaded: LoadedConfig, paths: GatewayPaths, stop: asyncio.Event) -> None:
    on_demand = [f for f in loaded.gateway.functions if f.lifecycle == "on-demand"]
    if not on_demand:
        return
    manifest = read_manifest(paths.state_dir / "functions")
    interval = loaded.gateway.gateway.status_interval_s
    pools = [build_pool(loaded, paths, f, manifest[f.name], interval) for f in on_demand]
    os.umask(0o022)
    async with asyncio.TaskGroup() as tasks:
        for pool in pools:
            assert pool.mqtt is not None
            tasks.create_task(pool.mqtt.run(stop))
            tasks.create_task(pool.run(stop))
