"""Per-device health and statistics for `millgate status`: up/down state with the reason, requests,
errors by kind, missed polls and request latency p50/p99 over a recent window.

It logs a device going down or coming back once per change, never once per failed retry. No I/O.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Any

log = logging.getLogger(__name__)

LATENCY_WINDOW = 1024


class DeviceHealth:
    def __init__(self, adapter: str, device: str):
        self.adapter = adapter
        self.device = device
        self.state = "starting"  # starting | up | down
        self.reason: str | None = None
        self.since = time.time()
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.missed_polls = 0
        self.writes_ok = 0
        self.writes_failed = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def answered(self, latency_s: float) -> None:
        self.requests += 1
        self._latencies.append(latency_s)

    def failed(self, kind: str) -> None:
        """A request that got no usable answer: kind is timeout, exception, connect or garbage."""
        self.requests += 1
        self.errors[kind] += 1

    def set_up(self) -> bool:
        """Mark the device answering; True (and one log line) if that is news."""
        if self.state == "up":
            return False
        if self.state == "down":
            log.info(
                "adapter=%s device=%s event=device-up down_for_s=%.1f",
                self.adapter,
                self.device,
                time.time() - self.since,
            )
        else:
            log.info("adapter=%s device=%s event=device-up", self.adapter, self.device)
        self.state, self.reason, self.since = "up", None, time.time()
        return True

    def set_down(self, reason: str) -> bool:
        """Mark the device not answering; True (and one log line) if the state or reason is news."""
        if self.state == "down" and self.reason == reason:
            return False
        log.warning("adapter=%s device=%s event=device-down reason=%s", self.adapter, self.device, reason)
        if self.state != "down":
            self.since = time.time()
        self.state, self.reason = "down", reason
        return True

    def latency_ms(self, quantile: float) -> float | None:
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return round(ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000, 3)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "since": round(self.since, 3),
            "requests": self.requests,
            "errors": dict(self.errors),
            "missed_polls": self.missed_polls,
            "writes_ok": self.writes_ok,
            "writes_failed": self.writes_failed,
            "latency_p50_ms": self.latency_ms(0.5),
            "latency_p99_ms": self.latency_ms(0.99),
        }
