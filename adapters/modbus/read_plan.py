"""Coalesces a device's tags into as few reads as the protocol allows: tags of one table and poll
interval that sit within `max_gap` of each other share a request of up to 125 registers or 2000 bits
(or the device's own lower maximum), so a poll's cost grows with requests, not with tags.

Planning only: it sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from adapters.modbus.register_map import TagBinding
from gateway.adapter_config import ModbusDevice


@dataclass
class ReadBlock:
    table: str  # coil | discrete | input | holding
    start: int
    count: int
    period_s: float
    tags: list[TagBinding] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + self.count - 1

    def describe(self) -> str:
        return f"{self.table} {self.start}" if self.count == 1 else f"{self.table} {self.start}-{self.end}"


def plan_reads(device: ModbusDevice, tags: Iterable[TagBinding]) -> list[ReadBlock]:
    groups: dict[tuple[str, int], list[TagBinding]] = {}
    for binding in tags:
        period_ms = binding.tag.poll_ms or device.poll_ms
        groups.setdefault((binding.tag.table, period_ms), []).append(binding)
    blocks: list[ReadBlock] = []
    for (table, period_ms), members in sorted(groups.items()):
        bits = table in ("coil", "discrete")
        limit = device.max_bits_per_read if bits else device.max_registers_per_read
        gap = device.max_bit_gap if bits else device.max_gap
        members.sort(key=lambda b: (b.first, b.last))
        current: ReadBlock | None = None
        for binding in members:
            if current is not None:
                end = max(current.end, binding.last)
                if binding.first - current.end - 1 <= gap and end - current.start + 1 <= limit:
                    current.count = end - current.start + 1
                    current.tags.append(binding)
                    continue
            current = ReadBlock(table, binding.first, binding.last - binding.first + 1, period_ms / 1000, [binding])
            blocks.append(current)
    return blocks


def split_block(block: ReadBlock) -> list[ReadBlock]:
    """One read per tag (tags on the same addresses, such as bits of one register, share theirs): what
    a coalesced read falls back to when the device refuses it, so one bad address spoils one tag."""
    parts: dict[tuple[int, int], ReadBlock] = {}
    for binding in block.tags:
        span = (binding.first, binding.last)
        part = parts.get(span)
        if part is None:
            part = ReadBlock(block.table, binding.first, binding.last - binding.first + 1, block.period_s)
            parts[span] = part
        part.tags.append(binding)
    return sorted(parts.values(), key=lambda part: part.start)
