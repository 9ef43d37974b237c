"""One Modbus device (a unit id on a bus) as its bus scheduler keeps it: its read plan and when each
read is due, its health and backoff, and the per-tag reads standing in for a coalesced read it refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adapters.base.device_health import DeviceHealth
from adapters.modbus.read_plan import ReadBlock, plan_reads
from adapters.modbus.register_map import DeviceMap
from gateway.backoff import Backoff

# devices start their schedules spread over this window (or their period, if shorter), not all at once
STAGGER_WINDOW_S = 1.0


@dataclass
class Split:
    """The per-tag reads standing in for a coalesced read the device refused."""

    parts: list[ReadBlock]
    retry_at: float  # loop time: try the coalesced read again from then on


class DeviceRuntime:
    """One unit id on a bus: its read plan and schedule, its health and backoff."""

    def __init__(self, adapter: str, device_map: DeviceMap, phase: float):
        self.config = device_map.config
        self.name = self.config.name
        self.unit = self.config.unit
        self.bindings = device_map.tags
        self.blocks: list[ReadBlock] = plan_reads(self.config, device_map.tags)
        self.health = DeviceHealth(adapter, self.name)
        self.timeout_s = self.config.timeout_ms / 1000
        self.backoff = Backoff(initial_s=min(1.0, self.config.poll_ms / 1000), cap_s=self.config.backoff_max_ms / 1000)
        self.phase = phase  # 0..1: where in each period this device's polls fall, so devices do not fire together
        self.due: list[float] = [0.0] * len(self.blocks)
        self.probe_at: float | None = None  # set while the device is down: when to try it again
        self.read_reason: dict[str, str] = {}  # a read's last refusal (by ReadBlock.describe()), logged once
        self.splits: dict[int, Split] = {}  # block index -> its per-tag reads

    def start(self, now: float) -> None:
        self.due = [now + min(block.period_s, STAGGER_WINDOW_S) * self.phase for block in self.blocks]

    def reschedule(self, index: int, now: float) -> None:
        period = self.blocks[index].period_s
        due = self.due[index] + period
        if due <= now:
            missed = math.ceil((now - due) / period)
            self.health.missed_polls += missed
            due += missed * period
        self.due[index] = due

    def split_parts(self, index: int, now: float) -> list[ReadBlock] | None:
        """The per-tag reads that stand in for block `index`, or None when its coalesced read is due."""
        split = self.splits.get(index)
        return split.parts if split is not None and now < split.retry_at else None

    def forget_splits(self) -> None:
        """Try every coalesced read again (the device or the bus came back; its map may have changed)."""
        for split in self.splits.values():
            for part in split.parts:
                self.read_reason.pop(part.describe(), None)
        self.splits.clear()
