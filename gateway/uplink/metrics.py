"""The uplink's health figures: counters the ingest and drain bump, rates sampled over a window, and
the snapshot of the spool that goes into the retained status on `millgate/uplink/status`.

It reads nothing itself: the uplink's sampler feeds it a SpoolStats now and then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from storage.spool import SpoolStats


@dataclass
class Rate:
    """Events per second over the last sampling window."""

    total: int = 0
    per_s: float = 0.0
    _last_total: int = 0
    _last_at: float = field(default_factory=time.monotonic)

    def add(self, n: int = 1) -> None:
        self.total += n

    def sample(self, now: float) -> None:
        elapsed = now - self._last_at
        if elapsed > 0:
            self.per_s = (self.total - self._last_total) / elapsed
        self._last_total, self._last_at = self.total, now


@dataclass
class UplinkMetrics:
    received: Rate = field(default_factory=Rate)
    received_bytes: Rate = field(default_factory=Rate)
    drained: Rate = field(default_factory=Rate)
    refused_by_cloud: int = 0
    throttled_by_cloud: int = 0  # PUBACKs saying "not now" (quota exceeded): retried, never dead-lettered
    cloud_state: str = "disabled"
    cloud_reason: str | None = None
    spool: SpoolStats | None = None
    spool_condition: str = "ok"  # ok | full | disk-full
    bulk_pending_batches: int = 0
    bulk_pending_records: int = 0
    bulk_uploaded: int = 0
    bulk_state: str = "disabled"
    bulk_condition: str = "ok"  # ok | full | disk-full
    bulk_bytes: int = 0
    bulk_counters: dict[str, int] = field(default_factory=dict)
    downlinked: int = 0

    def sample(self) -> None:
        now = time.monotonic()
        for rate in (self.received, self.received_bytes, self.drained):
            rate.sample(now)

    def outage_hours_absorbable(self) -> float | None:
        """How long the spool could take the current inflow with the cloud gone; None: no inflow."""
        if self.spool is None or self.received_bytes.per_s <= 0:
            return None
        free = max(self.spool.max_bytes - self.spool.bytes, 0)
        return round(free / self.received_bytes.per_s / 3600, 2)

    def status_fields(self) -> dict[str, Any]:
        spool = self.spool
        fields: dict[str, Any] = {
            "cloud": {
                "connected": self.cloud_state == "connected",
                "state": self.cloud_state,
                "reason": self.cloud_reason,
            },
            "inflow_msgs_per_s": round(self.received.per_s, 1),
            "drained_msgs_per_s": round(self.drained.per_s, 1),
            "drained_total": self.drained.total,
            "refused_by_cloud": self.refused_by_cloud,
            "throttled_by_cloud": self.throttled_by_cloud,
            "downlinked_total": self.downlinked,
            "outage_hours_absorbable": self.outage_hours_absorbable(),
            "bulk": {
                "state": self.bulk_state,
                "batches_pending": self.bulk_pending_batches,
                "records_pending": self.bulk_pending_records,
                "uploaded": self.bulk_uploaded,
                "condition": self.bulk_condition,
                "bytes": self.bulk_bytes,
                "counters": self.bulk_counters,
            },
        }
        if spool is not None:
            fields["spool"] = {
                "condition": self.spool_condition,
                "messages": spool.messages,
                "bytes": spool.bytes,
                "max_bytes": spool.max_bytes,
                "oldest_age_s": round(time.time() - spool.oldest_ts, 1) if spool.oldest_ts else None,
                "dead_letters": spool.dead_letters,
                "counters": spool.counters,
            }
        return fields
