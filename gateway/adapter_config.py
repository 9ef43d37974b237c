"""The model of an adapters/*.toml file: one plant adapter (Modbus or OPC-UA), its devices or nodes
and their tags, validated field by field.

Protocol I/O is not here; adapters/ reads these models and does the talking.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    FiniteFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config import Name, Strict
from gateway.config_problems import NotUtf8, config_text, describe_error
from gateway.topics import TopicError, adapter_tag_topic, validate_topic_name

REGISTER_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "string", "bool")
REGISTER_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "float32": 2, "float64": 4}
MAX_READ_REGISTERS = 125  # Modbus application protocol 6.3: quantity of registers 1-125
MAX_READ_BITS = 2000  # 6.1: quantity of coils 1-2000
MAX_WRITE_REGISTERS = 123  # 6.12: write multiple registers, quantity 1-123
MAX_RTU_UNIT = 247  # Modbus over serial line 2.2: 0 is broadcast, 1-247 slaves, 248-255 reserved


def _topic_name(value: str) -> str:
    try:
        return validate_topic_name(value)
    except TopicError as exc:
        raise ValueError(f"invalid MQTT topic: {exc}") from None


TopicName = Annotated[str, AfterValidator(_topic_name)]
Order = Literal["big", "little"]


class ModbusTag(Strict):
    name: Name
    table: Literal["coil", "discrete", "input", "holding"]
    address: int = Field(ge=0, le=65535)
    type: Literal["int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "string", "bool"] | None = None
    length: int | None = Field(default=None, ge=1, le=125)  # registers, for type = "string"
    bit: int | None = Field(default=None, ge=0, le=15)  # bit-in-register, for type = "bool" on registers
    scale: FiniteFloat = 1.0  # NaN or an infinity would turn every reading into one
    offset: FiniteFloat = 0.0
    units: str | None = None
    deadband: FiniteFloat = Field(default=0.0, ge=0)
    deadband_percent: FiniteFloat = Field(default=0.0, ge=0, le=100)
    poll_ms: int | None = Field(default=None, ge=10, le=86_400_000)
    writable: bool = False
    word_order: Order | None = None
    byte_order: Order | None = None
    topic: TopicName | None = None
    # "change": when the value moves past the deadband or the quality changes; "every_poll": always
    publish: Literal["change", "every_poll"] = "change"

    @model_validator(mode="after")
    def _type_fits_table(self) -> Self:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type not in (None, "bool"):
            raise ValueError(f"a {self.table} holds one bit: type must be 'bool', not {self.type!r}")
        if bit_table and self.bit is not None:
            raise ValueError(f"'bit' selects a bit inside a register; a {self.table} is already one bit")
        if not bit_table and self.type is None:
            raise ValueError(f"a {self.table} register needs a type ({', '.join(REGISTER_TYPES)})")
        if self.type == "string" and self.length is None:
            raise ValueError("a string tag needs 'length' (registers)")
        if self.type == "bool" and not bit_table and self.bit is None:
            raise ValueError("a bool in a register needs 'bit' (0-15)")
        if self.bit is not None and self.type != "bool":
            raise ValueError(f"'bit' selects one bit, so type must be 'bool', not {self.type!r}")
        if self.length is not None and self.type != "string":
            raise ValueError(f"'length' is for strings; a {self.type} has a fixed width")
        if self.scale == 0:
            raise ValueError("scale 0 would turn every reading into the offset; use a non-zero scale")
        if (self.deadband or self.deadband_percent) and (self.type in ("string", "bool") or bit_table):
            raise ValueError(f"a deadband needs a number; a {self.type or 'bool'} tag publishes on every change")
        if self.writable and self.table in ("discrete", "input"):
            raise ValueError(f"a {self.table} is read-only in Modbus: it cannot be writable")
        if self.writable and self.register_count > MAX_WRITE_REGISTERS:
            raise ValueError(
                f"a writable {self.type} of {self.register_count} registers cannot be written: one Modbus write "
                f"(function 16) carries at most {MAX_WRITE_REGISTERS}; shorten 'length' or drop 'writable'"
            )
        last = self.address + self.register_count - 1
        if last > 65535:
            raise ValueError(f"address {self.address} + {self.register_count} registers runs past 65535")
        return self

    @property
    def register_count(self) -> int:
        if self.table in ("coil", "discrete") or self.type == "bool":
            return 1
        if self.type == "string":
            return self.length or 1
        return REGISTER_WIDTH[self.type or "uint16"]

    @property
    def is_bit(self) -> bool:
        """Whether the value is one bit of the table (a coil or discrete input), not a register."""
        return self.table in ("coil", "discrete")


class ModbusDevice(Strict):
    name: Name
    transport: Literal["tcp", "rtu"]
    host: str | None = None
    port: int | str | None = None  # TCP port (default 502), or the serial device path for RTU
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(default=1, ge=0, le=255)  # tcp: 0-255 (255 and 0 are common); rtu: 1-247
    poll_ms: int = Field(default=1000, ge=10, le=86_400_000)
    timeout_ms: int = Field(default=1000, ge=10, le=60_000)
    retries: int = Field(default=3, ge=0, le=10)
    max_registers_per_read: int = Field(default=125, ge=1, le=125)
    max_bits_per_read: int = Field(default=2000, ge=1, le=2000)
    max_gap: int = Field(default=8, ge=0, le=124)  # unused registers a read may span to join two tags
    max_bit_gap: int = Field(default=64, ge=0, le=1999)  # the same for coils and discrete inputs
    inter_frame_ms: FiniteFloat | None = Field(default=None, ge=0, le=1000)  # rtu: silence between frames
    backoff_max_ms: int = Field(default=30_000, ge=100, le=3_600_000)  # longest wait between probes
    word_order: Order = "big"
    byte_order: Order = "big"
    tags_csv: str | None = None  # a register map CSV, relative to the adapter file's directory
    tags: list[ModbusTag] = Field(default_factory=list)

    @field_validator("unit")
    @classmethod
    def _unit_fits_transport(cls, unit: int, info: ValidationInfo) -> int:
        if info.data.get("transport") == "rtu":
            if unit == 0:
                raise ValueError(
                    f"unit 0 is the broadcast address on a serial line: no device answers it (use 1-{MAX_RTU_UNIT})"
                )
            if unit > MAX_RTU_UNIT:
                raise ValueError(f"unit {unit} is reserved on a serial line: RTU units are 1-{MAX_RTU_UNIT}")
        return unit

    @property
    def bus(self) -> str:
        """The physical bus this device sits on: one scheduler per bus, shared by its unit ids."""
        return f"tcp://{self.host}:{self.port or 502}" if self.transport == "tcp" else f"rtu://{self.port}"

    @property
    def frame_gap_s(self) -> float:
        """Silence between RTU frames: the configured value, or 3.5 characters (1.75 ms above 19200 baud)."""
        if self.inter_frame_ms is not None:
            return self.inter_frame_ms / 1000
        if self.transport == "tcp":
            return 0.0
        bits_per_char = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return max(3.5 * bits_per_char / self.baudrate, 0.00175)

    @model_validator(mode="after")
    def _transport_fields(self) -> Self:
        if self.transport == "tcp":
            if not self.host:
                raise ValueError("a tcp device needs 'host'")
            if self.port is not None and not (isinstance(self.port, int) and 1 <= self.port <= 65535):
                raise ValueError(f"port {self.port!r}: a tcp port is a number from 1 to 65535")
        else:
            if not isinstance(self.port, str) or not self.port:
                raise ValueError("an rtu device needs 'port', the serial device path (e.g. '/dev/ttyUSB0')")
            if self.host is not None:
                raise ValueError("an rtu device has no 'host'; it uses the serial 'port'")
        if not self.tags and not self.tags_csv:
            raise ValueError("a device needs tags: [[devices.tags]] or tags_csv")
        return self


class ModbusAdapter(Strict):
    name: Name
    protocol: Literal["modbus"]
    qos: Literal[0, 1] = 1  # of tag value publications
    retain: bool = False  # keep each tag's last value on the broker for late subscribers
    devices: list[ModbusDevice] = Field(min_length=1)


def modbus_tag_topic(adapter: str, device: ModbusDevice, tag: ModbusTag) -> str:
    """Where a tag's value is published (its writes arrive on this plus `/set`)."""
    return tag.topic or adapter_tag_topic(adapter, device.name, tag.name)


class RegisterMapError(ValueError):
    """A register map CSV that cannot be read or has invalid rows; `problems` are (key path, message)."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {where}: {what}" for where, what in problems))


REGISTER_MAP_COLUMNS = tuple(ModbusTag.model_fields)
HEX_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]+")  # register addresses as device manuals print them


@dataclass(frozen=True)
class RegisterMap:
    """A register map CSV as read: the rows that are tags (row number, tag), every row's name cell, and
    what is wrong with the other rows as (where, what); `unreadable` says why there was nothing to read."""

    tags: list[tuple[int, ModbusTag]] = field(default_factory=list)
    names: list[tuple[int, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    unreadable: str | None = None


def parse_register_map(text: str) -> RegisterMap:
    """A register map CSV: a header row naming ModbusTag fields (name, table, address, type...), then one
    tag per row; an empty cell takes the field's default, an address may be 0x hex."""
    reader = csv.DictReader(io.StringIO(text))
    found = RegisterMap()
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        if not header:
            return RegisterMap(problems=[("(header)", "empty file: the first row must name the columns")])
        unknown = [h for h in header if h not in REGISTER_MAP_COLUMNS]
        if unknown:
            known = ", ".join(REGISTER_MAP_COLUMNS)
            comma = "; columns are separated by commas" if len(header) == 1 and ";" in header[0] else ""
            message = f"unknown column(s) {', '.join(unknown)} (known: {known}){comma}"
            return RegisterMap(problems=[("(header)", message)])
        for row_number, row in enumerate(reader, start=2):
            _parse_row(row_number, row, found)
    except csv.Error as exc:
        found.problems.append((f"line {reader.line_num}", f"not CSV: {exc}"))
    return found


def _parse_row(row_number: int, row: dict[Any, Any], found: RegisterMap) -> None:
    extra = [v for v in row.get(None) or () if v.strip()]
    raw: dict[str, Any] = {k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip()}
    if extra:
        found.problems.append((f"row {row_number}", f"more cells than the header has columns: {extra!r}"))
    if not raw:
        return
    if isinstance(raw.get("name"), str):
        found.names.append((row_number, raw["name"]))
    if HEX_NUMBER.fullmatch(raw.get("address", "")):
        raw["address"] = int(raw["address"], 16)
    try:
        found.tags.append((row_number, ModbusTag.model_validate(raw, strict=False)))
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(row)"
            found.problems.append((f"row {row_number}.{where}", describe_error(error)))


def read_register_map(path: Path) -> RegisterMap:
    try:
        text = config_text(path.read_bytes())
    except FileNotFoundError:
        return RegisterMap(unreadable="does not exist")
    except OSError as exc:
        return RegisterMap(unreadable=f"cannot be read: {exc.strerror or exc}")
    except NotUtf8 as exc:
        return RegisterMap(problems=[(exc.where, exc.message)])
    return parse_register_map(text)


def register_map_file(tags_csv: str, adapter_dir: Path) -> Path:
    """Where a device's `tags_csv` is: relative to the adapter file's directory."""
    path = Path(tags_csv)
    return path if path.is_absolute() else adapter_dir / path


def register_map_path(device: ModbusDevice, adapter_dir: Path) -> Path | None:
    return None if device.tags_csv is None else register_map_file(device.tags_csv, adapter_dir)


def device_tags(device: ModbusDevice, adapter_dir: Path) -> list[ModbusTag]:
    """Every tag of a device: its [[devices.tags]] then its register map CSV. Raises RegisterMapError."""
    path = register_map_path(device, adapter_dir)
    if path is None:
        return list(device.tags)
    found = read_register_map(path)
    if found.unreadable:
        raise RegisterMapError(path, [("(file)", found.unreadable)])
    if found.problems:
        raise RegisterMapError(path, found.problems)
    return list(device.tags) + [tag for _, tag in found.tags]


def tag_span(tag: ModbusTag) -> tuple[int, int]:
    """First and last address a tag occupies in its table."""
    return tag.address, tag.address + tag.register_count - 1


def overlap_conflict(a: ModbusTag, b: ModbusTag) -> str | None:
    """Why two tags of one device that share addresses disagree, or None if they may coexist: an alias
    (same address, type and layout), bits of one register, or a bit of a 16-bit register."""
    if a.table != b.table:
        return None
    (a_first, a_last), (b_first, b_last) = tag_span(a), tag_span(b)
    if a_last < b_first or b_last < a_first:
        return None
    if a.is_bit:
        return None
    if a.bit is not None or b.bit is not None:
        bit_tag, other = (a, b) if a.bit is not None else (b, a)
        if other.bit is not None or other.register_count == 1:
            return None
        return (
            f"bit {bit_tag.bit} of register {bit_tag.address} lies inside {other.type} tag {other.name!r}; "
            "a bit may only share a 16-bit register"
        )
    layout = ("type", "length", "word_order", "byte_order")
    if a.address == b.address and all(getattr(a, f) == getattr(b, f) for f in layout):
        return None
    return (
        f"{a.table} {a_first}-{a_last} ({a.type}) overlaps tag {b.name!r} at {b_first}-{b_last} ({b.type}) "
        "with a different layout; give both the same address, type and order, or move one"
    )


NODE_ID_PATTERN = r"^(ns=\d+;|nsu=[^;]+;)?[isgb]=.+$"  # OPC-UA Part 6 5.3.1.10, e.g. ns=2;s=Line2.Temperature
BROWSE_PATH_PATTERN = r"^(\d+:)?[^/]+(/(\d+:)?[^/]+)*$"  # from Objects: "2:Line2/2:Temperature"
NodeIdText = Annotated[str, Field(pattern=NODE_ID_PATTERN)]
BrowsePathText = Annotated[str, Field(pattern=BROWSE_PATH_PATTERN)]


class OpcuaNode(Strict):
    name: Name
    node_id: NodeIdText | None = None
    browse_path: BrowsePathText | None = None  # resolved once per session, from the Objects folder
    topic: TopicName | None = None  # default: <adapter>/<name>
    sampling_ms: int = Field(default=1000, ge=0, le=86_400_000)  # monitored item sampling, or the poll period
    deadband: FiniteFloat = Field(default=0.0, ge=0)  # absolute, in the node's units
    deadband_percent: FiniteFloat = Field(default=0.0, ge=0, le=100)  # subscribe: of the node's EURange (server side)
    queue_size: int = Field(default=1, ge=1, le=10_000)  # server-side queue of the monitored item
    mode: Literal["subscribe", "poll"] = "subscribe"  # poll: read every sampling_ms (for unreliable servers)
    writable: bool = False  # true: `<topic>/set` writes the node with its own data type
    units: str | None = None

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("a node needs exactly one of 'node_id' or 'browse_path'")
        if self.deadband and self.deadband_percent:
            raise ValueError("an OPC-UA data change filter has one deadband: set 'deadband' or 'deadband_percent'")
        if self.mode == "poll" and self.sampling_ms < 10:
            raise ValueError(f"a polled node needs sampling_ms >= 10 (got {self.sampling_ms})")
        return self

    @property
    def address(self) -> str:
        return self.node_id or f"browse path {self.browse_path}"


class OpcuaMethod(Strict):
    """A method an operator or function may call: a JSON list of input arguments on `topic`, the
    outputs (or the error) on `<topic>/result`."""

    name: Name
    object_id: NodeIdText  # the object the method belongs to
    method_id: NodeIdText
    topic: TopicName | None = None  # default: <adapter>/<name>/call
    timeout_ms: int = Field(default=10_000, ge=100, le=600_000)


EVENT_FIELD_PATTERN = r"^(\d+:)?[^/:]+(/(\d+:)?[^/:]+)*$"  # relative to the event type: "Severity", "2:Temperature"
DEFAULT_EVENT_FIELDS = ("EventId", "EventType", "SourceName", "Time", "Severity", "Message")
BASE_EVENT_TYPE = "i=2041"  # ns=0 BaseEventType: every event


def event_field_key(field: str) -> str:
    """The JSON key of an event field: its browse path without namespace indexes ("2:Temperature" -> "Temperature")."""
    return "/".join(part.split(":", 1)[-1] for part in field.split("/"))


class OpcuaEvents(Strict):
    """Events (alarms, conditions, audit events) from one event notifier, each published as JSON with
    the selected fields on `topic`."""

    name: Name
    node_id: NodeIdText | None = None  # the event notifier, e.g. i=2253 (the Server object) or ns=2;s=Line2
    browse_path: BrowsePathText | None = None  # or its browse path from Objects, resolved per session
    event_type: NodeIdText = BASE_EVENT_TYPE  # only events of this type and its subtypes
    fields: list[Annotated[str, Field(pattern=EVENT_FIELD_PATTERN)]] = Field(
        default_factory=lambda: list(DEFAULT_EVENT_FIELDS), min_length=1, max_length=64
    )
    topic: TopicName | None = None  # default: <adapter>/events/<name>
    queue_size: int = Field(default=100, ge=1, le=10_000)  # server-side queue of the event monitored item

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("an event source needs exactly one of 'node_id' or 'browse_path'")
        keys = [event_field_key(f) for f in self.fields]
        for index, key in enumerate(keys):
            if key in keys[:index]:
                raise ValueError(f"fields[{index}] {self.fields[index]!r}: the field {key!r} is selected twice")
        return self

    @property
    def address(self) -> str:
        return self.node_id or f"browse path {self.browse_path}"


class OpcuaAdapter(Strict):
    name: Name
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^\s/]+(/.*)?$")
    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    username: str | None = None
    password: str | None = None
    # the client's application instance certificate (DER or PEM) and key; default: generated on first use
    # under <state>/opcua/<adapter>/ and its thumbprint logged, for the operator to trust on the server
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None  # pin the server's certificate (a file); default: the endpoint's own
    # the endpoint's certificate against <state>/opcua/<adapter>/pki/trusted/: "explicit" refuses an unknown
    # one (saved in rejected/ for `millgate opcua trust accept`); "first-use" trusts the first one ever seen
    trust: Literal["explicit", "first-use"] = "explicit"
    application_uri: str | None = None  # default: urn:millgate:<adapter>
    qos: Literal[0, 1] = 1  # of node value publications
    retain: bool = False
    timeout_ms: int = Field(default=5000, ge=100, le=120_000)  # every request and the connect sequence
    backoff_max_ms: int = Field(default=30_000, ge=100, le=3_600_000)  # longest wait between reconnects
    watchdog_ms: int = Field(default=1000, ge=100, le=60_000)  # how often an idle session is probed
    # a quiet subscription's keep-alive period; no publish response for twice this: the session is lost
    keepalive_ms: int = Field(default=5000, ge=100, le=600_000)
    nodes: list[OpcuaNode] = Field(min_length=1)
    methods: list[OpcuaMethod] = Field(default_factory=list)
    events: list[OpcuaEvents] = Field(default_factory=list)

    @model_validator(mode="after")
    def _security_pairs(self) -> Self:
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(
                f"security_policy {self.security_policy!r} and security_mode {self.security_mode!r} "
                "must both be 'None' or both be set"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("'username' and 'password' go together (omit both for anonymous)")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("'certificate' and 'private_key' go together (omit both to generate a pair)")
        return self

    def node_topic(self, node: OpcuaNode) -> str:
        return opcua_node_topic(self.name, node)

    def method_topic(self, method: OpcuaMethod) -> str:
        return opcua_method_topic(self.name, method)

    def events_topic(self, events: OpcuaEvents) -> str:
        return opcua_events_topic(self.name, events)


def opcua_node_topic(adapter: str, node: OpcuaNode) -> str:
    """Where a node's value is published (its `/set` is this plus `/set`)."""
    return node.topic or f"{adapter}/{node.name}"


def opcua_method_topic(adapter: str, method: OpcuaMethod) -> str:
    """Where calls of a method arrive (its outcome goes to this plus `/result`)."""
    return method.topic or f"{adapter}/{method.name}/call"


def opcua_events_topic(adapter: str, events: OpcuaEvents) -> str:
    """Where the events of one `[[events]]` source are published, one message per event."""
    return events.topic or f"{adapter}/events/{events.name}"


AdapterConfig = ModbusAdapter | OpcuaAdapter
ADAPTER_MODELS: dict[str, type[ModbusAdapter] | type[OpcuaAdapter]] = {
    "modbus": ModbusAdapter,
    "opcua": OpcuaAdapter,
}
