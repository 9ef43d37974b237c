"""What an adapter file's models cannot check alone: duplicate device, tag, node, method and event names,
one topic claimed twice, Modbus register maps and bus addresses, one serial line per adapter.
gateway/config_loader.py runs these for every adapters/*.toml."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.adapter_config import (
    AdapterConfig,
    ModbusAdapter,
    ModbusDevice,
    ModbusTag,
    OpcuaAdapter,
    RegisterMapError,
    device_tags,
    modbus_tag_topic,
    overlap_conflict,
    register_map_path,
)
from gateway.config_problems import Problem, duplicate_names, duplicates


class TopicClaims:
    """Every topic one adapter publishes or listens on, with the key path that claimed it first, so
    two uses of one topic are caught: a value, its `/set` and `/set/result`, a method call, events."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def reserve(self, owner: str, topics: Iterable[str]) -> None:
        for topic in topics:
            self._owner.setdefault(topic, owner)

    def taken(self, owner: str, topics: Iterable[str]) -> tuple[str, str] | None:
        """The first of `topics` that another owner claimed, and that owner."""
        for topic in topics:
            other = self._owner.get(topic, owner)
            if other != owner:
                return topic, other
        return None

    def values(self, points: Sequence[tuple[str, str]], reported: set[str], shown: str) -> list[Problem]:
        """Claim the topics of value points (key path, topic) that take writes on `<topic>/set`, then one
        problem per point whose topic another point uses too (as its topic, `/set` or `/set/result`);
        points in `reported` (a duplicate name, already a problem) are not reported again."""
        for owner, topic in points:
            self.reserve(owner, (topic, f"{topic}/set", f"{topic}/set/result"))
        problems = []
        for owner, topic in points:
            clash = self.taken(owner, (topic, f"{topic}/set", f"{topic}/set/result"))
            if clash is not None and owner not in reported:
                used, other = clash
                what = f"topic {used!r}" if used == topic else f"topic {topic!r}: its {used!r}"
                problems.append(Problem(shown, f"{owner}.topic", f"{what} is also used by {other}"))
        return problems


def modbus_tag_checks(
    device: ModbusDevice, d_index: int, tags: list[ModbusTag], paths: list[str], shown: str
) -> list[Problem]:
    problems: list[Problem] = []
    for index, first in duplicates([t.name for t in tags]):
        problems.append(
            Problem(shown, f"{paths[index]}.name", f"duplicate tag name {tags[index].name!r} (also {paths[first]})")
        )
    for index, tag in enumerate(tags):
        limit = device.max_bits_per_read if tag.is_bit else device.max_registers_per_read
        if tag.register_count > limit:
            problems.append(
                Problem(
                    shown,
                    f"{paths[index]}.type",
                    f"a {tag.type} needs {tag.register_count} registers in one read, more than "
                    f"devices[{d_index}].max_registers_per_read = {limit}",
                )
            )
    by_table: dict[str, list[int]] = {}
    for index, tag in enumerate(tags):
        by_table.setdefault(tag.table, []).append(index)
    for indexes in by_table.values():
        indexes.sort(key=lambda i: tags[i].address)
        for position, index in enumerate(indexes):
            last = tags[index].address + tags[index].register_count - 1
            for other in indexes[position + 1 :]:
                if tags[other].address > last:
                    break
                conflict = overlap_conflict(tags[other], tags[index])
                if conflict:
                    problems.append(Problem(shown, paths[other], f"{conflict} ({paths[index]})"))
    return problems


def modbus_cross_checks(adapter: ModbusAdapter, adapter_dir: Path, shown: str) -> list[Problem]:
    problems: list[Problem] = []
    problems += duplicate_names(shown, "devices", [d.name for d in adapter.devices], "device")
    for index, first in duplicates([f"{d.bus}|{d.unit}" for d in adapter.devices]):
        device = adapter.devices[index]
        problems.append(
            Problem(shown, f"devices[{index}].unit", f"unit {device.unit} on {device.bus} is also devices[{first}]")
        )
    serial_first: dict[str, int] = {}
    for index, device in enumerate(adapter.devices):
        if device.transport != "rtu":
            continue
        first = serial_first.setdefault(device.bus, index)
        line = ("baudrate", "parity", "stopbits", "bytesize")
        differs = [f for f in line if getattr(device, f) != getattr(adapter.devices[first], f)]
        if differs:
            problems.append(
                Problem(
                    shown,
                    f"devices[{index}].{differs[0]}",
                    f"devices on one serial line share its settings: {device.port} is set up differently in "
                    f"devices[{first}] ({', '.join(differs)})",
                )
            )
    points: list[tuple[str, str]] = []  # (key path, topic) of every tag
    reported: set[str] = set()  # tags whose name (or device name) is already reported as a duplicate
    duplicate_devices = {index for index, _ in duplicates([d.name for d in adapter.devices])}
    for d_index, device in enumerate(adapter.devices):
        csv_path = register_map_path(device, adapter_dir)
        try:
            tags = device_tags(device, adapter_dir)
        except RegisterMapError as exc:
            problems += [Problem(str(exc.path), where, what) for where, what in exc.problems]
            continue
        paths = [f"devices[{d_index}].tags[{i}]" for i in range(len(device.tags))]
        paths += [f"devices[{d_index}].tags_csv ({csv_path}) row {i + 2}" for i in range(len(tags) - len(paths))]
        problems += modbus_tag_checks(device, d_index, tags, paths, shown)
        points += [(path, modbus_tag_topic(adapter.name, device, tag)) for path, tag in zip(paths, tags, strict=True)]
        if d_index in duplicate_devices:
            reported.update(paths)
        reported.update(paths[index] for index, _ in duplicates([t.name for t in tags]))
    problems += TopicClaims().values(points, reported, shown)
    return problems


def serial_line_checks(adapter: ModbusAdapter, shown: str, lines: dict[str, tuple[str, int, str]]) -> list[Problem]:
    """One scheduler serialises a serial line, so a line belongs to one adapter file and one spelling:
    the same port in two files, or spelled two ways in one (a /dev/serial/by-id/ link and the device it
    points to), would put two masters on one RS-485 line. `lines`: real path -> (file, device index,
    port) of its first user in the files checked so far."""
    problems: list[Problem] = []
    for index, device in enumerate(adapter.devices):
        if device.transport != "rtu":
            continue
        port = str(device.port)
        line = os.path.realpath(port)
        first_file, first_index, first_port = lines.setdefault(line, (shown, index, port))
        resolved = f", both {line}" if port != first_port else ""
        if first_file != shown:
            problems.append(
                Problem(
                    shown,
                    f"devices[{index}].port",
                    f"serial port {port!r} is also used by {first_file} devices[{first_index}].port "
                    f"{first_port!r}{resolved}: one serial line belongs to one adapter; put its devices in one file",
                )
            )
        elif port != first_port:
            problems.append(
                Problem(
                    shown,
                    f"devices[{index}].port",
                    f"{port!r} is the serial line of devices[{first_index}].port {first_port!r}{resolved}: "
                    "spell it the same way so its devices share one bus",
                )
            )
    return problems


def adapter_cross_checks(adapter: AdapterConfig, adapter_dir: Path, shown: str) -> list[Problem]:
    """Every check of one adapter file (`adapter_dir`: where its relative paths, e.g. a CSV map, start)."""
    problems: list[Problem] = []
    if isinstance(adapter, ModbusAdapter):
        problems += modbus_cross_checks(adapter, adapter_dir, shown)
    else:
        problems += opcua_cross_checks(adapter, shown)
    return problems


def opcua_cross_checks(adapter: OpcuaAdapter, shown: str) -> list[Problem]:
    problems: list[Problem] = []
    problems += duplicate_names(shown, "nodes", [n.name for n in adapter.nodes], "node")
    problems += duplicate_names(shown, "methods", [m.name for m in adapter.methods], "method")
    claims = TopicClaims()
    duplicate_nodes = {f"nodes[{index}]" for index, _ in duplicates([n.name for n in adapter.nodes])}
    nodes = [(f"nodes[{index}]", adapter.node_topic(node)) for index, node in enumerate(adapter.nodes)]
    problems += claims.values(nodes, duplicate_nodes, shown)
    for index, method in enumerate(adapter.methods):
        topic = adapter.method_topic(method)
        for used in (topic, topic + "/result"):
            clash = claims.taken(f"methods[{index}]", [used])
            if clash is not None:
                problems.append(Problem(shown, f"methods[{index}].topic", f"topic {used!r} is also used by {clash[1]}"))
        claims.reserve(f"methods[{index}]", (topic, topic + "/result"))
    problems += duplicate_names(shown, "events", [e.name for e in adapter.events], "events")
    duplicate_events = {index for index, _ in duplicates([e.name for e in adapter.events])}
    for index, events in enumerate(adapter.events):
        topic = adapter.events_topic(events)
        clash = claims.taken(f"events[{index}]", [topic])
        if clash is not None and index not in duplicate_events:
            problems.append(Problem(shown, f"events[{index}].topic", f"topic {topic!r} is also used by {clash[1]}"))
        claims.reserve(f"events[{index}]", [topic])
    return problems
