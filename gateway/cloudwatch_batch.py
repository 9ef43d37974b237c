"""Log events bound for CloudWatch Logs: a per-stream buffer with a byte cap (oldest dropped, counted)
and the split of a stream's events into PutLogEvents batches under the API's limits.

It holds and splits events; it knows nothing of files, boto3 or processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

# PutLogEvents: https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576  # sum of UTF-8 message sizes plus EVENT_OVERHEAD per event
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000 - 1
TRUNCATED = " [truncated]"


@dataclass(frozen=True)
class LogEvent:
    timestamp_ms: int
    message: str
    # the caller's note of where this event came from (logship: where its log resumes after it)
    mark: object = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return len(self.message.encode("utf-8")) + EVENT_OVERHEAD


def clip(message: str) -> str:
    """A message CloudWatch accepts: at most MAX_EVENT_BYTES of UTF-8, never empty."""
    data = message.encode("utf-8")
    if not data:
        return " "
    if len(data) <= MAX_EVENT_BYTES:
        return message
    keep = MAX_EVENT_BYTES - len(TRUNCATED.encode())
    return data[:keep].decode("utf-8", errors="ignore") + TRUNCATED


def batches(events: Iterable[LogEvent]) -> list[list[LogEvent]]:
    """Consecutive runs of `events` (already in time order) that each fit one PutLogEvents call."""
    found: list[list[LogEvent]] = []
    current: list[LogEvent] = []
    size = 0
    for event in events:
        too_many = len(current) >= MAX_BATCH_EVENTS
        too_big = size + event.size > MAX_BATCH_BYTES
        too_long = bool(current) and event.timestamp_ms - current[0].timestamp_ms > MAX_BATCH_SPAN_MS
        if current and (too_many or too_big or too_long):
            found.append(current)
            current, size = [], 0
        current.append(event)
        size += event.size
    if current:
        found.append(current)
    return found


class EventBuffer:
    """Events per stream, in arrival order, under a cap on their total size; over it, the oldest
    event of any stream is dropped and counted."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.streams: dict[str, deque[LogEvent]] = {}
        self.bytes = 0
        self.dropped = 0

    def add(self, stream: str, event: LogEvent) -> None:
        # CloudWatch wants each batch in time order; a line stamped earlier than its predecessor (a
        # clock step, a continuation line) takes the predecessor's time rather than reordering the log
        queue = self.streams.setdefault(stream, deque())
        if queue and event.timestamp_ms < queue[-1].timestamp_ms:
            event = replace(event, timestamp_ms=queue[-1].timestamp_ms)
        queue.append(event)
        self.bytes += event.size
        while self.bytes > self.max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        stream = min((s for s, q in self.streams.items() if q), key=lambda s: self.streams[s][0].timestamp_ms)
        self.bytes -= self.streams[stream].popleft().size
        self.dropped += 1

    def pending(self) -> dict[str, list[LogEvent]]:
        return {stream: list(queue) for stream, queue in self.streams.items() if queue}

    def acknowledge(self, stream: str, count: int) -> LogEvent | None:
        """The first `count` events of `stream` were accepted (or rejected for good): forget them and
        return the last of them."""
        queue = self.streams.get(stream)
        last = None
        for _ in range(min(count, len(queue or ()))):
            assert queue is not None
            last = queue.popleft()
            self.bytes -= last.size
        return last

    def __len__(self) -> int:
        return sum(len(q) for q in self.streams.values())
