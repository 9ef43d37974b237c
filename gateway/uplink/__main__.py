"""Entry point of the uplink process: wires the spool, the local broker client, the cloud link, the
drain, the downlink and the bulk uploader together, and stops them on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from functools import partial

from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.acl import UPLINK
from gateway.component import ComponentContext, start_component, stop_on_signals
from gateway.mqtt import LocalMqtt, Received
from gateway.storage_thread import StorageThread
from gateway.topics import filters_overlap
from gateway.uplink.bulk_upload import BulkUploader
from gateway.uplink.cloud_link import CloudLink, CloudMessage, LinkConfigError
from gateway.uplink.downlink import Downlink
from gateway.uplink.drain import Drain
from gateway.uplink.ingest import Ingest
from gateway.uplink.metrics import UplinkMetrics
from gateway.uplink.shadow_relay import ShadowRelay, cloud_filters, synced_shadows
from storage.bulk import BulkStore
from storage.spool import Rule, Spool, SpoolCorrupt, SpoolError

log = logging.getLogger("gateway.uplink")

# a damaged spool file: supervisord leaves the uplink stopped (exitcodes), the file untouched for the operator
EXIT_STORAGE = 3
EXIT_CONFIG = 2
# any other storage failure (a write lock held too long, a disk still full after freeing room): exit
# unexpectedly so supervisord starts the uplink again; what was not yet stored is redelivered by the broker
EXIT_RETRY = 1
EXPIRE_EVERY_S = 30.0
DEFAULT_MAX_PAYLOAD = 128 * 1024


def open_spool(ctx: ComponentContext) -> Spool:
    config = ctx.loaded.gateway
    try:
        ctx.paths.uplink_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # `millgate run` made it, with its owner
    except OSError as exc:
        raise SpoolError(f"{ctx.paths.uplink_dir}: cannot create: {exc.strerror}") from exc
    return Spool(
        ctx.paths.spool_db,
        max_bytes=int(config.spool.max_bytes),
        policy=config.spool.policy,
        rules=[Rule(r.prefix, r.priority, r.ttl_s) for r in config.spool.topics],
        max_payload_bytes=int(config.cloud.max_payload_bytes) if config.cloud else DEFAULT_MAX_PAYLOAD,
        dead_letter_max_bytes=int(config.spool.dead_letter_max_bytes),
    )


def storage_failure_status(exc: BaseException) -> int:
    """Log why the spool or bulk store failed; the exit status that tells supervisord what to do."""
    if isinstance(exc, SpoolCorrupt):
        log.error("event=spool-unusable %s", exc)
        return EXIT_STORAGE
    log.error("event=spool-write-failed %s; the uplink restarts and tries again", exc)
    return EXIT_RETRY


def warn_about_echoes(to_cloud: list[str], from_cloud: list[str]) -> None:
    """MQTT 3.1.1 has no noLocal: the cloud sends the uplink's own publishes on overlapping filters
    back, and the downlink republishes them locally once (never up again: the local side has noLocal)."""
    pairs = [f"{up}~{down}" for up in to_cloud for down in from_cloud if filters_overlap(up, down)]
    if pairs:
        log.warning(
            "event=cloud-echo-possible protocol=3.1.1 overlapping=%s detail=the cloud sends what the uplink publishes "
            'on these topics back and it is republished locally once; use [cloud] protocol = "5" (noLocal) or '
            "disjoint to-cloud and from-cloud topics",
            ",".join(pairs),
        )


async def sample(
    spool: Spool, storage: StorageThread, metrics: UplinkMetrics, link: CloudLink | None, every_s: float
) -> None:
    since_expiry = 0.0
    while True:
        metrics.sample()
        if since_expiry >= EXPIRE_EVERY_S:
            await storage.call(spool.expire)
            since_expiry = 0.0
        metrics.spool = await storage.call(spool.stats)
        if link is not None:
            metrics.cloud_state, metrics.cloud_reason = link.state, link.reason
        await asyncio.sleep(every_s)
        since_expiry += every_s


async def main() -> int:
    ctx = start_component(UPLINK)
    config = ctx.loaded.gateway
    stop = stop_on_signals()
    storage = StorageThread()
    try:
        spool = storage.run(open_spool, ctx)
        bulk_store = (
            storage.run(
                partial(
                    BulkStore,
                    ctx.paths.bulk_db,
                    ctx.paths.bulk_dir,
                    max_bytes=int(config.bulk.max_bytes),
                    policy=config.spool.policy,
                )
            )
            if config.bulk
            else None
        )
    except SpoolError as exc:
        storage.close()
        return storage_failure_status(exc)

    metrics = UplinkMetrics()
    metrics.spool = storage.run(spool.stats)
    wake = asyncio.Event()
    thing = config.gateway.thing_name
    bulk = BulkUploader(bulk_store, storage, config.bulk, thing, metrics) if config.bulk and bulk_store else None
    local: LocalMqtt | None = None

    def ack(received: object) -> None:
        assert local is not None
        local.ack(received)  # type: ignore[arg-type]

    ingest = Ingest(
        spool,
        storage,
        ack,
        metrics,
        wake,
        max_batch=config.spool.max_batch,
        bulk=bulk_store,
        is_bulk=bulk.wants if bulk else lambda _t: False,
    )
    to_cloud = list(dict.fromkeys(s.topic for s in config.subscriptions if s.target == "cloud"))
    from_cloud = list(dict.fromkeys(s.topic for s in config.subscriptions if s.source == "cloud"))
    # shadow sync rides on the cloud link only; without a [cloud] section the core's engine just waits
    shadow_filters = cloud_filters(config.shadows) if config.cloud is not None else []
    relay: ShadowRelay | None = None

    async def on_local_message(received: Received) -> None:
        # the core's shadow-sync requests go to the relay only, never into the spool
        if relay is not None and relay.wants_local(received.topic):
            await relay.on_local_message(received)
        else:
            await ingest.on_message(received)

    def status_fields() -> dict[str, object]:
        return {**metrics.status_fields(), **(relay.status_fields() if relay is not None else {})}

    local = LocalMqtt(
        ctx.paths.broker_socket,
        ctx.creds,
        UPLINK,
        status_interval_s=config.gateway.status_interval_s,
        # noLocal: what the downlink republishes from the cloud is never spooled to go back up
        subscriptions=[(topic, SubscribeOptions(qos=1, noLocal=True)) for topic in to_cloud]
        + ([ShadowRelay.local_subscription()] if shadow_filters else []),
        on_message=on_local_message,
        status_fields=status_fields,
        inbox_size=config.spool.max_batch * 2,
        manual_ack=True,
        persistent_session=True,
    )
    link = None
    drain = None
    if config.cloud is not None:
        downlink = Downlink(local, metrics)

        async def on_cloud_message(message: CloudMessage) -> None:
            # answers for the synced shadows go to the core's sync engine, not through the downlink
            if relay is not None and relay.wants_cloud(message.topic):
                await relay.on_cloud_message(message)
            else:
                await downlink.on_cloud_message(message)

        try:
            link = CloudLink(
                config.cloud,
                config.cloud.client_id or thing,
                subscriptions=list(dict.fromkeys(from_cloud + shadow_filters)),
                on_message=on_cloud_message,
            )
        except LinkConfigError as exc:
            log.error("event=cloud-config-unusable %s", exc)
            storage.close()
            return EXIT_CONFIG
        downlink.link = link
        if shadow_filters:
            relay = ShadowRelay(local, link, config.shadows)
        drain = Drain(
            spool,
            storage,
            link,
            metrics,
            wake,
            window=config.cloud.inflight_window,
            dead_after=config.cloud.dead_letter_after,
        )
    if config.cloud is not None and config.cloud.protocol == "3.1.1":
        warn_about_echoes(to_cloud, from_cloud)
    count, size = spool.depth
    log.info(
        "event=starting spool=%s messages=%d bytes=%d max_bytes=%d policy=%s cloud=%s to_cloud=%s from_cloud=%s "
        "synced_shadows=%d",
        spool.path,
        count,
        size,
        spool.max_bytes,
        spool.policy,
        f"{config.cloud.endpoint}:{config.cloud.port}" if config.cloud else "none (local-only: data stays spooled)",
        ",".join(to_cloud) or "-",
        ",".join(from_cloud) or "-",
        len(synced_shadows(config.shadows)) if shadow_filters else 0,
    )
    status = 0
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(local.run(stop))
            workers = [
                tasks.create_task(ingest.run()),
                tasks.create_task(sample(spool, storage, metrics, link, config.gateway.status_interval_s)),
            ]
            if link is not None and drain is not None:
                tasks.create_task(link.run(stop))
                workers.append(tasks.create_task(drain.run()))
            if bulk is not None:
                workers.append(tasks.create_task(bulk.run()))
            if relay is not None:
                workers.append(tasks.create_task(relay.run()))
            await stop.wait()
            if relay is not None:
                await relay.announce_stopped()
            for worker in workers:
                worker.cancel()
    except* SpoolError as group:
        status = storage_failure_status(group.exceptions[0])
    storage.run(spool.close)
    if bulk_store is not None:
        storage.run(bulk_store.close)
    storage.close()
    log.info("event=stopped")
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
