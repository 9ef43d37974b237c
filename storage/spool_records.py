"""What goes into and comes out of the spool: its errors, rules, messages, results, statistics, dead
letters and the names of its persisted counters. No I/O here; storage/spool.py does that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

Policy = Literal["drop-oldest", "reject-new"]

# counter names, persisted so they survive restarts: `millgate spool stats` shows them
DROPPED_FULL = "dropped.spool-full"  # drop-oldest: an old message made room for a new one
REJECTED_FULL = "rejected.spool-full"  # reject-new: a new message was refused
DROPPED_DISK_FULL = "dropped.disk-full"
REJECTED_DISK_FULL = "rejected.disk-full"
EXPIRED = "expired.ttl"
DEAD_TOO_LARGE = "dead.payload-too-large"
DEAD_REFUSED = "dead.refused"
DEAD_LINK_DROPPED = "dead.link-dropped"  # the cloud hung up on it each time it was sent (no reason code)
PURGED = "purged.operator"
DEAD_DROPPED = "dropped.dead-letters-full"  # the oldest dead letters, past dead_letter_max_bytes
# a message's own absolute deadline in its properties (MQTT 5 message expiry, made absolute when it
# arrived): the spool expires the message at the earlier of this and its prefix's TTL
MESSAGE_DEADLINE = "message_expiry_at"


class SpoolError(Exception):
    """The spool file cannot be used; the message names the file and what to do."""


class SpoolCorrupt(SpoolError):
    pass


class SpoolUnwritable(SpoolError):
    pass


@dataclass(frozen=True)
class Rule:
    prefix: str
    priority: int = 0
    ttl_s: float | None = None


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 1
    ts: float = field(default_factory=time.time)
    properties: dict[str, Any] | None = None


@dataclass(frozen=True)
class Stored:
    id: int
    topic: str
    payload: bytes
    qos: int
    ts: float
    properties: dict[str, Any] | None
    priority: int
    tries: int


@dataclass
class AppendResult:
    stored: int = 0
    dropped_oldest: int = 0
    rejected: int = 0
    dead: int = 0
    disk_full: bool = False


@dataclass(frozen=True)
class SpoolStats:
    messages: int
    bytes: int
    max_bytes: int
    oldest_ts: float | None
    dead_letters: int
    counters: dict[str, int]
    by_priority: dict[int, int]


@dataclass(frozen=True)
class DeadLetter:
    id: int
    topic: str
    payload: bytes
    qos: int
    ts: float
    tries: int
    reason: str
    dead_at: float
