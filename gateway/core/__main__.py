"""Entry point of the core process: wires config, the local MQTT client and the core's services."""

from __future__ import annotations

import asyncio
import logging

from functions.runtime import run_on_demand_functions
from gateway.acl import CORE
from gateway.component import start_component, stop_on_signals
from gateway.core.health import ComponentHealth
from gateway.core.socket_access import keep_socket_open_to_local_users
from gateway.mqtt import LocalMqtt
from gateway.topics import STATUS_FILTER

log = logging.getLogger("gateway.core")


async def main() -> None:
    ctx = start_component(CORE)
    stop = stop_on_signals()
    health = ComponentHealth()
    mqtt = LocalMqtt(
        ctx.paths.broker_socket,
        ctx.creds,
        CORE,
        status_interval_s=ctx.loaded.gateway.gateway.status_interval_s,
        subscriptions=[(STATUS_FILTER, 1)],
        on_message=health.on_status,
        status_fields=lambda: {"thing_name": ctx.loaded.gateway.gateway.thing_name, **health.summary()},
    )
    log.info("event=starting thing=%s config=%s", ctx.loaded.gateway.gateway.thing_name, ctx.paths.config_dir)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(mqtt.run(stop))
        tasks.create_task(run_on_demand_functions(ctx.loaded, ctx.paths, stop))
        tasks.create_task(keep_socket_open_to_local_users(ctx.paths.broker_socket, stop))
    log.info("event=stopped")


if __name__ == "__main__":
    asyncio.run(main())
