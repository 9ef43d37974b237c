"""Entry point of one Modbus adapter process (`python -m adapters.modbus --name line1`): wires the
register map, the bus schedulers, the publisher, the `/set` router and the local MQTT client.
"""

from __future__ import annotations

import asyncio
import logging

from adapters.base.commands import CommandRouter, command_subscriptions
from adapters.base.publisher import Publisher
from adapters.modbus.register_map import build_register_map
from adapters.modbus.scheduler import Buses
from gateway.adapter_config import ModbusAdapter, RegisterMapError
from gateway.component import start_component, stop_on_signals
from gateway.mqtt import LocalMqtt

log = logging.getLogger("adapters.modbus")


async def main() -> None:
    ctx = start_component("adapter")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # every failure is reported by the scheduler
    adapter_file = ctx.loaded.adapters.get(ctx.name or "")
    if adapter_file is None or not isinstance(adapter_file.config, ModbusAdapter):
        log.error("event=not-started reason=no modbus adapter named %r in %s/adapters", ctx.name, ctx.paths.config_dir)
        raise SystemExit(2)
    config = adapter_file.config
    try:
        devices = build_register_map(config, adapter_file.path.parent)
    except RegisterMapError as exc:
        log.error("event=not-started reason=invalid register map: %s", exc)
        raise SystemExit(2) from None

    stop = stop_on_signals()
    publisher = Publisher(config.name, qos=config.qos, retain=config.retain)
    buses = Buses(config.name, devices, publisher.offer)
    router = CommandRouter(config.name, buses.points, buses)
    mqtt = LocalMqtt(
        ctx.paths.broker_socket,
        ctx.creds,
        ctx.component,
        status_interval_s=ctx.loaded.gateway.gateway.status_interval_s,
        subscriptions=command_subscriptions(router.filters()),
        on_message=router.handle,
        status_fields=lambda: {"devices": buses.status(), "publish": publisher.stats()},
    )
    router.broker = mqtt
    log.info(
        "event=starting adapter=%s devices=%d tags=%d buses=%d",
        config.name,
        len(devices),
        len(buses.points),
        len(buses.schedulers),
    )
    async with asyncio.TaskGroup() as tasks:
        workers = [tasks.create_task(buses.run()), tasks.create_task(publisher.run(mqtt))]
        tasks.create_task(mqtt.run(stop))
        await stop.wait()
        router.cancel()
        for worker in workers:
            worker.cancel()
    log.info("event=stopped adapter=%s", config.name)


if __name__ == "__main__":
    asyncio.run(main())
