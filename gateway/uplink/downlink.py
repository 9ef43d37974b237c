"""Cloud to local: a message the cloud link received on a `source = "cloud"` subscription is published
on the local broker under the same topic (QoS 1) and only then acknowledged to the cloud.

It decides nothing about who may receive it: the local broker's ACL (from the subscriptions) does.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.backoff import Backoff
from gateway.mqtt import LocalMqtt, MqttError, PublishRefused
from gateway.uplink.cloud_link import CloudLink, CloudMessage
from gateway.uplink.metrics import UplinkMetrics

log = logging.getLogger(__name__)

LOCAL_PUBLISH_TIMEOUT_S = 10.0


class Downlink:
    def __init__(self, local: LocalMqtt, metrics: UplinkMetrics):
        self.local = local
        self.metrics = metrics
        self.link: CloudLink | None = None
        self._backoff = Backoff(initial_s=0.2, cap_s=10.0)
        self._refused_topics: set[str] = set()
        self._waiting = False

    async def on_cloud_message(self, message: CloudMessage) -> None:
        while True:
            try:
                await self.local.publish(message.topic, message.payload, qos=1, timeout_s=LOCAL_PUBLISH_TIMEOUT_S)
                break
            except PublishRefused as exc:
                if message.topic not in self._refused_topics:
                    self._refused_topics.add(message.topic)
                    log.error(
                        "event=downlink-refused topic=%s reason=%s action=add a [[subscriptions]] entry with "
                        'source = "cloud" for this topic',
                        message.topic,
                        exc,
                    )
                break  # the local ACL will refuse it every time: acknowledge and drop it
            except (MqttError, TimeoutError) as exc:
                if not self._waiting:
                    self._waiting = True
                    log.warning("event=downlink-waiting-for-local-broker reason=%s", exc)
                await asyncio.sleep(self._backoff.next_delay())
        if self._waiting:
            self._waiting = False
            log.info("event=downlink-resumed")
        self._backoff.reset()
        self.metrics.downlinked += 1
        if self.link is not None:
            self.link.ack(message)
