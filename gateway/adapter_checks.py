"""What an adapter file's models cannot check alone: duplicate device, tag, node, method and event names,
one topic claimed twice, Modbus register maps and bus addresses, one serial line per adapter, and the
certificate files an OPC-UA adapter names. gateway/config_loader.py runs these for every adapters/*.toml,
on whatever of the file validated, so that one bad key does not hide the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapter_config import (
    ModbusAdapter,
    ModbusDevice,
    ModbusTag,
    OpcuaAdapter,
    OpcuaEvents,
    OpcuaMethod,
    OpcuaNode,
    RegisterMap,
    modbus_tag_topic,
    opcua_events_topic,
    opcua_method_topic,
    opcua_node_topic,
    overlap_conflict,
    read_register_map,
    register_map_file,
)
from gateway.config_files import opcua_file_checks
from gateway.config_problems import Entries, Problem, duplicate_names, duplicates, valid_or_none


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


@dataclass(frozen=True)
class ModbusDevicePart:
    """One [[devices]] entry as far as it validated: `device` is None when its own keys have problems
    (with only the inline tags that validated, it is checked as if those were all); `tags` are those
    tags by their index in the file, `tag_names` every inline tag's name as written."""

    name: str | None
    device: ModbusDevice | None
    tags: list[tuple[int, ModbusTag]]
    tag_names: list[str | None]
    tags_csv: str | None

    @classmethod
    def of(cls, device: ModbusDevice) -> ModbusDevicePart:
        return cls(device.name, device, list(enumerate(device.tags)), [t.name for t in device.tags], device.tags_csv)

    @classmethod
    def check(cls, raw: Any) -> ModbusDevicePart:
        if not isinstance(raw, dict):
            return cls(None, None, [], [], None)
        raw_tags = raw.get("tags", [])
        tags = Entries.check(ModbusTag, raw_tags)
        device = None
        if tags.names is not None:
            device = valid_or_none(ModbusDevice, {**raw, "tags": [raw_tags[i] for i in tags.valid]})
        name, tags_csv = raw.get("name"), raw.get("tags_csv")
        return cls(
            name if isinstance(name, str) else None,
            device,
            list(tags.valid.items()),
            tags.names or [],
            tags_csv if isinstance(tags_csv, str) and tags_csv else None,
        )


def modbus_parts(adapter: ModbusAdapter | None, raw: dict[str, Any]) -> list[ModbusDevicePart]:
    if adapter is not None:
        return [ModbusDevicePart.of(device) for device in adapter.devices]
    devices = raw.get("devices")
    return [ModbusDevicePart.check(device) for device in devices] if isinstance(devices, list) else []


def modbus_tag_checks(
    device: ModbusDevice | None,
    d_index: int,
    named: list[tuple[str, str | None]],
    tags: list[tuple[str, ModbusTag]],
    shown: str,
) -> tuple[list[Problem], set[str]]:
    """Duplicate names among every tag of a device as written (`named`: key path, name), and widths and
    overlaps among those that validated (`tags`); also the key paths already reported as duplicates."""
    problems: list[Problem] = []
    names = [name for _, name in named]
    for index, first in duplicates(names):
        problems.append(
            Problem(shown, f"{named[index][0]}.name", f"duplicate tag name {names[index]!r} (also {named[first][0]})")
        )
    reported = {named[index][0] for index, _ in duplicates(names)}
    if device is not None:
        problems += _width_checks(device, d_index, tags, shown)
    by_table: dict[str, list[tuple[str, ModbusTag]]] = {}
    for path, tag in tags:
        by_table.setdefault(tag.table, []).append((path, tag))
    for in_table in by_table.values():
        in_table.sort(key=lambda item: item[1].address)
        for position, (path, tag) in enumerate(in_table):
            last = tag.address + tag.register_count - 1
            for other_path, other in in_table[position + 1 :]:
                if other.address > last:
                    break
                conflict = overlap_conflict(other, tag)
                if conflict:
                    problems.append(Problem(shown, other_path, f"{conflict} ({path})"))
    return problems, reported


def _width_checks(device: ModbusDevice, d_index: int, tags: list[tuple[str, ModbusTag]], shown: str) -> list[Problem]:
    problems = []
    for path, tag in tags:
        limit = device.max_bits_per_read if tag.is_bit else device.max_registers_per_read
        if tag.register_count > limit:
            problems.append(
                Problem(
                    shown,
                    f"{path}.type",
                    f"a {tag.type} needs {tag.register_count} registers in one read, more than "
                    f"devices[{d_index}].max_registers_per_read = {limit}",
                )
            )
    return problems


def modbus_bus_checks(devices: list[tuple[int, ModbusDevice]], shown: str) -> list[Problem]:
    """One unit per bus address, and one set of line settings per serial line, among the valid devices."""
    problems: list[Problem] = []
    for position, first in duplicates([f"{d.bus}|{d.unit}" for _, d in devices]):
        (index, device), first_index = devices[position], devices[first][0]
        message = f"unit {device.unit} on {device.bus} is also devices[{first_index}]"
        problems.append(Problem(shown, f"devices[{index}].unit", message))
    serial_first: dict[str, tuple[int, ModbusDevice]] = {}
    for index, device in devices:
        if device.transport != "rtu":
            continue
        first_index, first_device = serial_first.setdefault(device.bus, (index, device))
        line = ("baudrate", "parity", "stopbits", "bytesize")
        differs = [f for f in line if getattr(device, f) != getattr(first_device, f)]
        if differs:
            problems.append(
                Problem(
                    shown,
                    f"devices[{index}].{differs[0]}",
                    f"devices on one serial line share its settings: {device.port} is set up differently in "
                    f"devices[{first_index}] ({', '.join(differs)})",
                )
            )
    return problems


def modbus_checks(adapter_name: str, parts: list[ModbusDevicePart], adapter_dir: Path, shown: str) -> list[Problem]:
    problems: list[Problem] = []
    problems += duplicate_names(shown, "devices", [p.name for p in parts], "device")
    problems += modbus_bus_checks([(i, p.device) for i, p in enumerate(parts) if p.device is not None], shown)
    points: list[tuple[str, str]] = []  # (key path, topic) of every tag
    reported: set[str] = set()  # tags whose name (or device name) is already reported as a duplicate
    duplicate_devices = {index for index, _ in duplicates([p.name for p in parts])}
    maps: dict[Path, RegisterMap] = {}
    for d_index, part in enumerate(parts):
        inline = f"devices[{d_index}].tags"
        named: list[tuple[str, str | None]] = [(f"{inline}[{i}]", name) for i, name in enumerate(part.tag_names)]
        tags = [(f"{inline}[{i}]", tag) for i, tag in part.tags]
        if part.tags_csv is not None:
            csv_path = register_map_file(part.tags_csv, adapter_dir)
            found, problems_of_map = _register_map(maps, csv_path, part, d_index, shown)
            problems += problems_of_map
            where = f"devices[{d_index}].tags_csv ({csv_path}) row"
            named += [(f"{where} {row}", name) for row, name in found.names]
            tags += [(f"{where} {row}", tag) for row, tag in found.tags]
        found_problems, duplicated = modbus_tag_checks(part.device, d_index, named, tags, shown)
        problems += found_problems
        reported |= duplicated
        if part.device is None:
            continue
        points += [(path, modbus_tag_topic(adapter_name, part.device, tag)) for path, tag in tags]
        if d_index in duplicate_devices:
            reported.update(path for path, _ in tags)
    problems += TopicClaims().values(points, reported, shown)
    return problems


def _register_map(
    maps: dict[Path, RegisterMap], path: Path, part: ModbusDevicePart, d_index: int, shown: str
) -> tuple[RegisterMap, list[Problem]]:
    """A device's register map, read once per adapter file; its rows' problems are reported with its
    first user (devices of one model often share a map), naming that device and file."""
    first = path not in maps
    found = maps.setdefault(path, read_register_map(path) if first else RegisterMap())
    if found.unreadable:
        message = f"{part.tags_csv!r} {found.unreadable} (looked at {path})"
        return found, [Problem(shown, f"devices[{d_index}].tags_csv", message)]
    user = f"devices[{d_index}] {part.name!r}" if part.name else f"devices[{d_index}]"
    return found, [
        Problem(str(path), where, f"{what}; map of {user} in {shown}") for where, what in found.problems
    ] if first else []


def serial_line_checks(
    devices: Iterable[tuple[int, ModbusDevice]], shown: str, lines: dict[str, tuple[str, int, str]]
) -> list[Problem]:
    """One scheduler serialises a serial line, so a line belongs to one adapter file and one spelling:
    the same port in two files, or spelled two ways in one (a /dev/serial/by-id/ link and the device it
    points to), would put two masters on one RS-485 line. `lines`: real path -> (file, device index,
    port) of its first user in the files checked so far."""
    problems: list[Problem] = []
    for index, device in devices:
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


def modbus_adapter_checks(
    adapter: ModbusAdapter | None,
    raw: dict[str, Any],
    name: str,
    adapter_dir: Path,
    shown: str,
    serial_lines: dict[str, tuple[str, int, str]],
) -> list[Problem]:
    """Every check of one Modbus adapter file (`adapter` None: it did not validate as a whole; `raw` is
    what it says, `adapter_dir` where its relative paths start) and of its serial lines against those
    of the files before it."""
    parts = modbus_parts(adapter, raw)
    valid = [(index, part.device) for index, part in enumerate(parts) if part.device is not None]
    return serial_line_checks(valid, shown, serial_lines) + modbus_checks(name, parts, adapter_dir, shown)


def opcua_adapter_checks(
    adapter: OpcuaAdapter | None, raw: dict[str, Any], name: str, adapter_dir: Path, shown: str, strict: bool
) -> list[Problem]:
    """Every check of one OPC-UA adapter file (`adapter` None: it did not validate as a whole), and when
    `strict` of the certificate and key files it names as they are on this host."""
    if adapter is not None:
        nodes, methods, events = Entries.of(adapter.nodes), Entries.of(adapter.methods), Entries.of(adapter.events)
    else:
        nodes = Entries.check(OpcuaNode, raw.get("nodes"))
        methods = Entries.check(OpcuaMethod, raw.get("methods"))
        events = Entries.check(OpcuaEvents, raw.get("events"))
    problems = opcua_checks(name, nodes, methods, events, shown)
    return problems + (opcua_file_checks(raw, adapter_dir, shown) if strict else [])


def opcua_checks(
    name: str, nodes: Entries[OpcuaNode], methods: Entries[OpcuaMethod], events: Entries[OpcuaEvents], shown: str
) -> list[Problem]:
    problems: list[Problem] = []
    problems += duplicate_names(shown, "nodes", nodes.names or [], "node")
    problems += duplicate_names(shown, "methods", methods.names or [], "method")
    claims = TopicClaims()
    duplicate_nodes = {f"nodes[{index}]" for index, _ in duplicates(nodes.names or [])}
    points = [(f"nodes[{index}]", opcua_node_topic(name, node)) for index, node in nodes.valid.items()]
    problems += claims.values(points, duplicate_nodes, shown)
    for index, method in methods.valid.items():
        topic = opcua_method_topic(name, method)
        for used in (topic, topic + "/result"):
            clash = claims.taken(f"methods[{index}]", [used])
            if clash is not None:
                problems.append(Problem(shown, f"methods[{index}].topic", f"topic {used!r} is also used by {clash[1]}"))
        claims.reserve(f"methods[{index}]", (topic, topic + "/result"))
    problems += duplicate_names(shown, "events", events.names or [], "events")
    duplicate_events = {index for index, _ in duplicates(events.names or [])}
    for index, source in events.valid.items():
        topic = opcua_events_topic(name, source)
        clash = claims.taken(f"events[{index}]", [topic])
        if clash is not None and index not in duplicate_events:
            problems.append(Problem(shown, f"events[{index}].topic", f"topic {topic!r} is also used by {clash[1]}"))
        claims.reserve(f"events[{index}]", [topic])
    return problems
