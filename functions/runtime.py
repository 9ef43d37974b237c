"""Assembles the on-demand function runtime inside the core: one pool per on-demand function (and per
long-lived Greengrass v1 function, whose single worker supervisord runs), each with its own broker
connection under the function's identity (so the whitelist decides what reaches it), its deployed
code, its granted groups and its log. On SIGHUP (`millgate deploy`, through supervisord) it re-reads
the deployed config and swaps in the new version of each native on-demand function whose own slice
changed (FunctionPool.reconfigure); everything else of the core stays as it is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from functions.dispatcher import FunctionPool, Worker
from functions.greengrass.environment import v1_environment
from functions.greengrass.service import GreengrassService
from functions.greengrass.workers import PinnedV1Worker, V1WorkerProcess, restart_program
from functions.mount_namespace import VolumeMount
from functions.runner_spec import RunnerSpec, write_spec
from functions.user_log import UserLog
from functions.worker_process import WorkerSpec
from gateway.acl import function_component, function_identity
from gateway.config import Function
from gateway.config_loader import ConfigInvalid, LoadedConfig, load_config
from gateway.credentials import load_credentials
from gateway.deploy_plan import in_core_fingerprints
from gateway.function_deploy import DeployedFunction, read_manifest
from gateway.model_resources import model_environment
from gateway.mqtt import LocalMqtt
from gateway.paths import GatewayPaths
from gateway.topics import invoke_topic

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
log = logging.getLogger(__name__)


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
        **model_environment(paths.state_dir, function),
        **function.environment,
    }


def routed_filters(loaded: LoadedConfig, function: str) -> list[str]:
    return [s.topic for s in loaded.gateway.subscriptions if s.target == f"function:{function}"]


def group_id(loaded: LoadedConfig) -> str:
    return loaded.gateway.discovery.group_id or loaded.gateway.gateway.thing_name


def function_environment(
    loaded: LoadedConfig, paths: GatewayPaths, function: Function, version: str, code_dir: Path
) -> dict[str, str]:
    """A worker's environment: the native one, or for a v1 function the v1 one built on it."""
    thing = loaded.gateway.gateway.thing_name
    native = worker_environment(function, paths, thing, code_dir)
    if function.runtime != "greengrass-v1":
        return native
    group_name = loaded.gateway.discovery.group_name
    return v1_environment(native, function, version, thing, group_id(loaded), group_name)


def runner_spec(
    loaded: LoadedConfig, paths: GatewayPaths, function: Function, deployed: DeployedFunction
) -> RunnerSpec:
    """Everything a long-lived function's runner needs, from the validated config (functions/runner_spec.py)."""
    config = loaded.gateway
    component = function_component(function.name)
    return RunnerSpec(
        name=function.name,
        runtime=function.runtime,
        handler=function.handler,
        uid=function.uid,
        gid=function.gid,
        memory_mb=function.memory_mb,
        timeout_s=function.timeout_s,
        queue_size=function.queue_size,
        thing_name=config.gateway.thing_name,
        status_interval_s=config.gateway.status_interval_s,
        log_level=config.logging.levels.get(component, config.logging.level),
        log_dir=str(config.gateway.log_dir) if config.gateway.log_dir else None,
        subscriptions=routed_filters(loaded, function.name),
        environment=function_environment(loaded, paths, function, deployed.version, Path(deployed.path)),
        mounts=list(volume_mounts(loaded, function)),
    )


def volume_mounts(loaded: LoadedConfig, function: Function) -> tuple[VolumeMount, ...]:
    """The function's volumes that have a `destination`, as its processes mount them."""
    resources = {r.name: r for r in loaded.gateway.resources}
    return tuple(
        VolumeMount(grant.name, resources[grant.name].path, destination, grant.access == "ro")
        for grant in function.resources
        if (destination := resources[grant.name].destination) is not None
    )


def write_runner_specs(loaded: LoadedConfig, paths: GatewayPaths) -> None:
    """One spec per long-lived function, after its code is deployed (the manifest has its version)."""
    deployed = read_manifest(paths.state_dir / "functions")
    for function in loaded.gateway.functions:
        if function.lifecycle == "long-lived":
            write_spec(paths, runner_spec(loaded, paths, function, deployed[function.name]))


def build_pool(
    loaded: LoadedConfig,
    paths: GatewayPaths,
    function: Function,
    deployed: DeployedFunction,
    status_interval_s: float,
    greengrass: GreengrassService | None = None,
) -> FunctionPool:
    if function.runtime == "greengrass-v1" and function.lifecycle == "long-lived":
        function = function.model_copy(update={"max_concurrency": 1})  # one worker, messages in order
    spec = worker_spec(loaded, paths, function, deployed)
    user_log = UserLog(paths.function_log(function.name), int(function.log_max_bytes))
    new_worker = None
    if function.runtime == "greengrass-v1":
        assert greengrass is not None, "v1 functions need the Greengrass service"
        new_worker = _v1_workers(function, spec, user_log, greengrass, paths)
    pool = FunctionPool(function, spec, user_log, list(deployed.problems), new_worker)
    subscriptions = [(f, 1) for f in routed_filters(loaded, function.name)] + [(invoke_topic(function.name), 1)]
    pool.mqtt = LocalMqtt(
        paths.broker_socket,
        load_credentials(paths.credentials_dir, function_identity(function.name)),
        function_component(function.name),
        status_interval_s=status_interval_s,
        subscriptions=subscriptions,
        on_message=pool.on_message,
        status_fields=pool.status,
        # the broker keeps the function's messages while the core restarts (a deployment, a crash)
        manual_ack=True,
        persistent_session=True,
    )
    if greengrass is not None:
        greengrass.attach(function.name, pool)
    return pool


def worker_spec(
    loaded: LoadedConfig, paths: GatewayPaths, function: Function, deployed: DeployedFunction
) -> WorkerSpec:
    code_dir = Path(deployed.path)
    return WorkerSpec(
        function=function.name,
        version=deployed.version,
        code_dir=code_dir,
        handler=function.handler,
        thing_name=loaded.gateway.gateway.thing_name,
        uid=function.uid,
        gid=function.gid,
        extra_groups=deployed.extra_groups,
        memory_mb=function.memory_mb,
        environment=function_environment(loaded, paths, function, deployed.version, code_dir),
        mounts=volume_mounts(loaded, function),
    )


def _v1_workers(
    function: Function, spec: WorkerSpec, user_log: UserLog, greengrass: GreengrassService, paths: GatewayPaths
) -> Callable[[], Worker]:
    if function.lifecycle == "long-lived":
        slot = next(s for s in greengrass.slots.values() if s.function == function.name)
        pinned = PinnedV1Worker(slot, functools.partial(restart_program, paths, function_component(function.name)))
        return lambda: pinned
    return lambda: V1WorkerProcess(spec, user_log, greengrass, function.timeout_s)


def runs_in_core(function: Function) -> bool:
    """On-demand functions, and long-lived v1 ones (the core hands their worker its messages)."""
    return function.lifecycle == "on-demand" or function.runtime == "greengrass-v1"


async def run_on_demand_functions(
    loaded: LoadedConfig,
    paths: GatewayPaths,
    stop: asyncio.Event,
    greengrass: GreengrassService | None = None,
    reload: asyncio.Event | None = None,
) -> None:
    """Run the core's pools until `stop`; each time `reload` is set (SIGHUP from `millgate deploy`,
    through supervisord), reconfigure_pools."""
    in_core = [f for f in loaded.gateway.functions if runs_in_core(f)]
    if not in_core:
        return
    manifest = read_manifest(paths.state_dir / "functions")
    interval = loaded.gateway.gateway.status_interval_s
    pools = {f.name: build_pool(loaded, paths, f, manifest[f.name], interval, greengrass) for f in in_core}
    for name, fingerprint in in_core_fingerprints(loaded, manifest).items():
        pools[name].fingerprint = fingerprint
    os.umask(0o022)
    async with asyncio.TaskGroup() as tasks:
        for pool in pools.values():
            assert pool.mqtt is not None
            tasks.create_task(pool.mqtt.run(stop))
            tasks.create_task(pool.run(stop))
        if reload is not None:
            tasks.create_task(_reconfigure_on(reload, stop, pools, paths))


async def _reconfigure_on(
    reload: asyncio.Event, stop: asyncio.Event, pools: dict[str, FunctionPool], paths: GatewayPaths
) -> None:
    while True:
        waits = [asyncio.ensure_future(reload.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        if stop.is_set():
            return
        reload.clear()
        await reconfigure_pools(pools, paths)


async def reconfigure_pools(pools: dict[str, FunctionPool], paths: GatewayPaths) -> list[str]:
    """Swap in the deployed version of every native on-demand function whose own slice changed
    (FunctionPool.reconfigure: the queue and the broker connection stay, old workers retire). A function
    added or removed, or any other change to the core, is a core restart (gateway/deploy_plan.py), which
    the deployment does itself: it is not looked at here."""
    try:
        loaded = load_config(paths.config_dir)
        manifest = read_manifest(paths.state_dir / "functions")
    except (ConfigInvalid, OSError, ValueError, TypeError) as exc:
        log.error("event=reconfigure-failed config=%s reason=%s", paths.config_dir, exc)
        return []
    wanted = in_core_fingerprints(loaded, manifest)
    changed = []
    for function in loaded.gateway.functions:
        pool, fingerprint = pools.get(function.name), wanted.get(function.name)
        if pool is None or fingerprint in (None, pool.fingerprint) or function.name not in manifest:
            continue
        deployed = manifest[function.name]
        spec = worker_spec(loaded, paths, function, deployed)
        await pool.reconfigure(function, spec, list(deployed.problems), fingerprint or "")
        changed.append(function.name)
    log.info("event=reconfigured functions=%s", ",".join(changed) or "-")
    return changed
