"""Entry point of one OPC-UA adapter process (`python -m adapters.opcua --name line2`): wires the node
bindings, the client certificate, the session, the publisher, the `/set` and method routers and the
local MQTT client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from adapters.base.commands import CommandRouter, command_subscriptions
from adapters.base.publisher import Publisher
from adapters.opcua.certificate import CertificateError, ClientCertificate, certificate_for_adapter
from adapters.opcua.event_map import build_event_bindings
from adapters.opcua.event_outbox import EventOutbox
from adapters.opcua.method_router import MethodRouter
from adapters.opcua.node_map import build_bindings
from adapters.opcua.session import OpcuaSession
from adapters.opcua.trust import TrustStore, pki_dir
from gateway.adapter_config import OpcuaAdapter
from gateway.component import start_component, stop_on_signals
from gateway.mqtt import LocalMqtt, Received

log = logging.getLogger("adapters.opcua")


async def client_certificate(config: OpcuaAdapter, state_dir: Path, config_dir: Path) -> ClientCertificate:
    """The configured pair, or the one generated under the state dir on first use."""
    return await asyncio.to_thread(certificate_for_adapter, config, state_dir, config_dir)


async def main() -> None:
    ctx = start_component("adapter")
    # every failure is reported once by the session with its reason; asyncua's own logs repeat it per retry
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    adapter_file = ctx.loaded.adapters.get(ctx.name or "")
    if adapter_file is None or not isinstance(adapter_file.config, OpcuaAdapter):
        log.error("event=not-started reason=no opcua adapter named %r in %s/adapters", ctx.name, ctx.paths.config_dir)
        raise SystemExit(2)
    config = adapter_file.config
    if config.server_certificate is not None:  # relative to the adapter's file, as `certificate` is
        pinned = adapter_file.path.parent / config.server_certificate
        if not pinned.is_file():
            log.error("event=not-started adapter=%s reason=server_certificate %s is not a file", config.name, pinned)
            raise SystemExit(2)
        config = config.model_copy(update={"server_certificate": str(pinned)})
    certificate = None
    trust = None
    if config.security_policy != "None":
        trust = TrustStore(pki_dir(ctx.paths.state_dir, config.name))
        try:
            certificate = await client_certificate(config, ctx.paths.state_dir, adapter_file.path.parent)
        except CertificateError as exc:
            log.error("event=not-started adapter=%s reason=client certificate: %s", config.name, exc)
            raise SystemExit(2) from None
        log.log(
            logging.WARNING if certificate.created else logging.INFO,
            "adapter=%s event=%s path=%s sha1=%s sha256=%s hint=%s",
            config.name,
            "client-certificate-created" if certificate.created else "client-certificate",
            certificate.cert_path,
            certificate.thumbprint,
            certificate.sha256,
            "trust this certificate on the OPC-UA server (its rejected/ folder or trust list)",
        )

    stop = stop_on_signals()
    nodes, methods = build_bindings(config)
    publisher = Publisher(config.name, qos=config.qos, retain=config.retain)
    outbox = EventOutbox(config.name, qos=config.qos)
    events = build_event_bindings(config)
    session = OpcuaSession(
        config,
        nodes,
        methods,
        publisher.offer,
        certificate,
        events=events,
        event_sink=lambda source, body: outbox.offer(source.topic, json.dumps(body, separators=(",", ":")).encode()),
        trust=trust,
    )
    writes = CommandRouter(config.name, session.points, session)
    calls = MethodRouter(config.name, methods, session.call)

    async def on_message(received: Received) -> None:
        await writes.handle(received)
        await calls.handle(received)

    mqtt = LocalMqtt(
        ctx.paths.broker_socket,
        ctx.creds,
        ctx.component,
        status_interval_s=ctx.loaded.gateway.gateway.status_interval_s,
        subscriptions=command_subscriptions(writes.filters() + calls.filters()),
        on_message=on_message,
        status_fields=lambda: {
            **session.status(),
            "publish": publisher.stats(),
            "calls": calls.stats(),
            "event_publish": outbox.stats(),
        },
    )
    writes.broker = calls.broker = mqtt
    log.info(
        "event=starting adapter=%s endpoint=%s security=%s/%s nodes=%d methods=%d events=%d",
        config.name,
        config.endpoint,
        config.security_policy,
        config.security_mode,
        len(nodes),
        len(methods),
        len(events),
    )
    async with asyncio.TaskGroup() as tasks:
        workers = [
            tasks.create_task(session.run()),
            tasks.create_task(publisher.run(mqtt)),
            tasks.create_task(outbox.run(mqtt)),
        ]
        tasks.create_task(mqtt.run(stop))
        await stop.wait()
        writes.cancel()
        calls.cancel()
        for worker in workers:
            worker.cancel()
    log.info("event=stopped adapter=%s", config.name)


if __name__ == "__main__":
    asyncio.run(main())
