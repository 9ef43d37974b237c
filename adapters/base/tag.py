"""What a tag is to the rest of the gateway (a point with a topic and publish rules) and what one
reading of it is (value, quality, timestamp, reason, and the source's own timestamps where the protocol
has them), rendered as the JSON the adapter publishes.

Protocol-neutral: how a value is read or encoded belongs to the protocol adapter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"  # a value the source itself doubts (OPC-UA Uncertain_*); Modbus never has one
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Point:
    """One tag as the adapter base sees it: where it is published and when."""

    device: str
    name: str
    topic: str
    writable: bool = False
    deadband: float = 0.0  # absolute, in the tag's engineering units
    deadband_percent: float = 0.0  # of the last published value
    every_poll: bool = False
    units: str | None = None

    @property
    def key(self) -> str:
        return f"{self.device}/{self.name}"


@dataclass(frozen=True, slots=True)
class SourceTimes:
    """The protocol's own timestamps of a reading, epoch ms (None: the server did not give one)."""

    source_ms: int | None
    server_ms: int | None


@dataclass(frozen=True, slots=True)
class TagValue:
    value: Any
    quality: Quality
    ts_ms: int  # when the adapter received the reading
    reason: str | None = None
    times: SourceTimes | None = None  # set by protocols that timestamp at the source (OPC-UA)

    @classmethod
    def good(cls, value: Any, ts_ms: int | None = None) -> TagValue:
        return cls(value, Quality.GOOD, now_ms() if ts_ms is None else ts_ms)

    @classmethod
    def bad(cls, reason: str, ts_ms: int | None = None) -> TagValue:
        return cls(None, Quality.BAD, now_ms() if ts_ms is None else ts_ms, reason)

    def payload(self, units: str | None = None) -> bytes:
        """`{"value", "quality", "ts"}` (ts in epoch milliseconds), plus "source_ts" and "server_ts" when the
        reading carries source times, "reason" when not good and "units" if set."""
        body: dict[str, Any] = {"value": self.value, "quality": self.quality.value, "ts": self.ts_ms}
        if self.times is not None:
            body["source_ts"] = self.times.source_ms
            body["server_ts"] = self.times.server_ms
        if self.reason is not None:
            body["reason"] = self.reason
        if units is not None:
            body["units"] = units
        try:
            return _COMPACT.encode(body).encode()
        except ValueError:
            # NaN or an infinity that reached here (JSON has neither): publish what it means, never
            # invalid JSON; protocol adapters turn these into bad readings with their own reason first
            body.update(value=None, quality=Quality.BAD.value, reason=f"not a finite number: {self.value!r}")
            return _COMPACT.encode(body).encode()


# one encoder (json.dumps builds one per call); allow_nan=False: `NaN` is not JSON and breaks consumers
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
