"""Capped exponential backoff with jitter, the one retry delay every reconnect loop uses."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

# past this many doublings every delay is the cap anyway; the exponent stops here so that a link down
# for days (an attempt a minute) never overflows a float
MAX_EXPONENT = 64


@dataclass
class Backoff:
    initial_s: float = 0.1
    cap_s: float = 30.0
    factor: float = 2.0
    _attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The wait before the next attempt: uniform in [c/2, c] with c = min(cap, initial * factor**n)."""
        ceiling = min(self.cap_s, self.initial_s * self.factor ** min(self._attempt, MAX_EXPONENT))
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile: every retry and polling loop's pause."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
