"""The keep-alive watchdog of a session's subscriptions. asyncua's publish loop stops for good on
BadNoSubscription, and a subscription the server dropped just goes quiet, so values would stay stale
but "good": every subscription is created with a keep-alive every `keepalive_ms`, and no publish
response (data or keep-alive) within KEEPALIVE_MARGIN of those, or a subscription asyncua had to
recreate behind our back, is reported as the session lost.

It creates and watches subscriptions; the session decides what a loss means.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import Subscription

LIFETIME_COUNT = 10_000  # publishing intervals the server keeps a subscription nobody publishes for
MAX_NOTIFICATIONS_PER_PUBLISH = 10_000
KEEPALIVE_MARGIN = 2.0  # keep-alive periods without a publish response before the session is lost


@dataclass
class _Watched:
    """A subscription of the current session and when it must have answered again."""

    subscription: Subscription
    subscription_id: int | None
    created: float  # time.monotonic(), asyncua's clock for last_publish_at
    limit_s: float


class PublishWatch:
    def __init__(self, endpoint: str, keepalive_ms: int, timeout_s: float):
        self.endpoint = endpoint
        self.keepalive_ms = keepalive_ms
        self.timeout_s = timeout_s
        self._watched: list[_Watched] = []

    def clear(self) -> None:
        """Forget the subscriptions of a session that ended."""
        self._watched = []

    async def create(self, client: Client, publishing_ms: float, handler: Any) -> Subscription:
        """A subscription whose keep-alive comes every `keepalive_ms` (asyncua's default is 75% of the
        session timeout), watched from now on."""
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = publishing_ms
        params.RequestedMaxKeepAliveCount = max(1, math.ceil(self.keepalive_ms / publishing_ms))
        params.RequestedLifetimeCount = max(LIFETIME_COUNT, 3 * params.RequestedMaxKeepAliveCount)
        params.MaxNotificationsPerPublish = MAX_NOTIFICATIONS_PER_PUBLISH
        params.PublishingEnabled = True
        params.Priority = 0
        async with asyncio.timeout(self.timeout_s):
            subscription = await client.create_subscription(params, handler)
        # asyncua keeps the parameters as finally agreed (it modifies the subscription after a revision)
        agreed = subscription.parameters
        keepalive_s = agreed.RequestedPublishingInterval * max(1, agreed.RequestedMaxKeepAliveCount) / 1000
        self._watched.append(
            _Watched(subscription, subscription.subscription_id, time.monotonic(), keepalive_s * KEEPALIVE_MARGIN)
        )
        return subscription

    async def run(self, lost: Callable[[str], None]) -> None:
        """Until cancelled, or until `lost(reason)` was called for a subscription gone quiet past its
        keep-alive (the server dropped it, or asyncua's publish loop stopped) or recreated by asyncua."""
        if not self._watched:
            return
        period_s = min(max(min(w.limit_s for w in self._watched) / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(period_s)
            now = time.monotonic()
            for watched in self._watched:
                subscription = watched.subscription
                if subscription.subscription_id != watched.subscription_id:
                    lost(f"subscription {watched.subscription_id} was dropped by the server")
                    return
                quiet_s = now - (subscription.last_publish_at or watched.created)
                if quiet_s > watched.limit_s:
                    lost(
                        f"no publish response or keep-alive from {self.endpoint} for {quiet_s:.1f} s "
                        f"(subscription {watched.subscription_id}): the server dropped it or stopped publishing"
                    )
                    return
