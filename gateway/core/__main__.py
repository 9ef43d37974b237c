"""Entry point of the core process: wires config, the local MQTT client and the core's services."""

from __future__ import annotations

import asyncio
import logging
import signal

from functions.greengrass import daemon as greengrass_api
from functions.greengrass.service import GreengrassService
from functions.runtime import run_on_demand_functions
from gateway.acl import CORE, UPLINK
from gateway.ca import CaKeyInsecure, check_key_permissions
from gateway.component import start_component, stop_on_signals
from gateway.core.cert_renewal import CertRenewal
from gateway.core.cloud_deploy import CloudDeployService
from gateway.core.health import ComponentHealth
from gateway.core.socket_access import keep_socket_open_to_local_users
from gateway.discovery import DiscoveryServer
from gateway.mqtt import LocalMqtt
from gateway.package_version import running_version
from gateway.shadows.router import TopicRouter
from gateway.shadows.service import ShadowService
from gateway.topics import STATUS_FILTER
from storage.shadows import ShadowStoreError

log = logging.getLogger("gateway.core")

# as the uplink's for a damaged spool: a store that cannot be opened will not open on a restart either,
# so supervisord treats this exit as final (gateway/supervisor_config.py) and the file is left alone
EXIT_STORAGE = 3


async def main() -> None:
    ctx = start_component(CORE)
    stop = stop_on_signals()
    # `millgate deploy` changed only native on-demand functions: swap their versions in (functions/runtime.py)
    reload = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload.set)
    health = ComponentHealth()
    # the shadow service shares the core's broker connection; a router splits the topics
    try:
        shadows = ShadowService.open(ctx.paths.state_dir / "shadows.db", ctx.loaded.gateway.shadows)
    except ShadowStoreError as exc:
        log.error("event=shadow-store-unusable %s", exc)
        raise SystemExit(EXIT_STORAGE) from None
    router = TopicRouter()
    router.add([STATUS_FILTER], health.on_status)
    router.add([f for f, _ in shadows.subscriptions], shadows.on_message)
    gw = ctx.loaded.gateway
    deployer = CloudDeployService(gw.gateway.thing_name, ctx.paths.config_dir, ctx.paths.state_dir, gw.deployment.cloud)
    router.add([f for f, _ in deployer.subscriptions], deployer.on_message)
    if shadows.sync is not None:
        health.when_offline(UPLINK, shadows.sync.on_uplink_offline)
    router.on_reconnect(shadows.on_broker_reconnected)
    # Greengrass v1 functions: the v1 HTTP API, whose shadow calls are answered over this connection
    greengrass = GreengrassService.for_config(ctx.loaded, ctx.paths)
    if greengrass is not None:
        router.add([f for f, _ in greengrass.subscriptions], greengrass.on_shadow_answer)
    # in the heartbeat: an OTA is healthy only once the restarted core runs the package's version
    running = running_version()
    version = {"version": running} if running is not None else {}
    mqtt = LocalMqtt(
        ctx.paths.broker_socket,
        ctx.creds,
        CORE,
        status_interval_s=ctx.loaded.gateway.gateway.status_interval_s,
        subscriptions=[
            (STATUS_FILTER, 1),
            *shadows.subscriptions,
            *deployer.subscriptions,
            *(greengrass.subscriptions if greengrass else []),
        ],
        on_message=router.dispatch,
        status_fields=lambda: {
            "thing_name": ctx.loaded.gateway.gateway.thing_name,
            **version,
            **health.summary(),
            **shadows.status_fields(),
            **(greengrass.status_fields() if greengrass else {}),
        },
    )
    log.info("event=starting thing=%s config=%s", ctx.loaded.gateway.gateway.thing_name, ctx.paths.config_dir)
    try:
        check_key_permissions(ctx.paths)
    except CaKeyInsecure as exc:
        log.error("event=refusing-to-start reason=%s", exc)
        raise SystemExit(1) from None
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(mqtt.run(stop))
        tasks.create_task(shadows.run(stop, mqtt.publish))
        tasks.create_task(deployer.run(stop, mqtt.publish))
        tasks.create_task(run_on_demand_functions(ctx.loaded, ctx.paths, stop, greengrass, reload))
        if greengrass is not None:
            greengrass.use_publisher(mqtt.publish)
            tasks.create_task(greengrass_api.serve(greengrass, stop))
        tasks.create_task(keep_socket_open_to_local_users(ctx.paths.broker_socket, stop))
        tasks.create_task(CertRenewal(ctx.paths, ctx.loaded.gateway).run(stop))
        tasks.create_task(DiscoveryServer(ctx.paths, ctx.loaded.gateway).run(stop))
    log.info("event=stopped")


if __name__ == "__main__":
    asyncio.run(main())
