"""The adapter's register map at run time: every device with its tags (from the adapter file and its
CSV register map) bound to a base Point (topic, publish rules) and a codec.

Building it reads the CSV files named in the config; it talks to no device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters.base.tag import Point
from adapters.modbus.codec import TagCodec
from gateway.adapter_config import ModbusAdapter, ModbusDevice, ModbusTag, device_tags, modbus_tag_topic


@dataclass(frozen=True, slots=True)
class TagBinding:
    point: Point
    tag: ModbusTag
    codec: TagCodec

    @property
    def first(self) -> int:
        return self.tag.address

    @property
    def last(self) -> int:
        return self.tag.address + self.tag.register_count - 1


@dataclass
class DeviceMap:
    config: ModbusDevice
    tags: list[TagBinding] = field(default_factory=list)


def bind_tag(adapter: str, device: ModbusDevice, tag: ModbusTag) -> TagBinding:
    point = Point(
        device=device.name,
        name=tag.name,
        topic=modbus_tag_topic(adapter, device, tag),
        writable=tag.writable,
        deadband=tag.deadband,
        deadband_percent=tag.deadband_percent,
        every_poll=tag.publish == "every_poll",
        units=tag.units,
    )
    return TagBinding(point, tag, TagCodec.for_tag(tag, device.word_order, device.byte_order))


def build_register_map(adapter: ModbusAdapter, adapter_dir: Path) -> list[DeviceMap]:
    """Every device of the adapter with its bound tags; raises RegisterMapError for a bad CSV."""
    return [
        DeviceMap(device, [bind_tag(adapter.name, device, tag) for tag in device_tags(device, adapter_dir)])
        for device in adapter.devices
    ]
