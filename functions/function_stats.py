"""A function's invocation counters and recent durations, as its heartbeat reports them: shared by the
core's on-demand pools and a long-lived function's runner (which must not import the dispatcher)."""

from __future__ import annotations

from collections import deque


class FunctionStats:
    def __init__(self) -> None:
        self.invocations = 0
        self.errors = 0
        self.timeouts = 0
        self.rejected = 0  # the input queue was full
        self.durations_ms: deque[float] = deque(maxlen=1000)

    def percentile(self, fraction: float) -> float | None:
        if not self.durations_ms:
            return None
        ordered = sorted(self.durations_ms)
        return round(ordered[min(int(len(ordered) * fraction), len(ordered) - 1)], 2)
