"""The model of an adapters/*.toml file: one plant adapter (Modbus or OPC-UA), its devices or nodes
and their tags, validated field by field.

Protocol I/O is not here; adapters/ reads these models and does the talking.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from gateway.config import Name, Strict
from gateway.topics import TopicError, validate_topic_name

REGISTER_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "string", "bool")
REGISTER_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "float32": 2, "float64": 4}


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
    scale: float = 1.0
    offset: float = 0.0
    units: str | None = None
    deadband: float = Field(default=0.0, ge=0)
    deadband_percent: float = Field(default=0.0, ge=0, le=100)
    poll_ms: int | None = Field(default=None, ge=10, le=86_400_000)
    writable: bool = False
    word_order: Order | None = None
    byte_order: Order | None = None
    topic: TopicName | None = None

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
        if self.writable and self.table in ("discrete", "input"):
            raise ValueError(f"a {self.table} is read-only in Modbus: it cannot be writable")
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


class ModbusDevice(Strict):
    name: Name
    transport: Literal["tcp", "rtu"]
    host: str | None = None
    port: int | str | None = None  # TCP port, or the serial device path for RTU
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(default=1, ge=0, le=247)
    poll_ms: int = Field(default=1000, ge=10, le=86_400_000)
    timeout_ms: int = Field(default=1000, ge=10, le=60_000)
    retries: int = Field(default=3, ge=0, le=10)
    max_registers_per_read: int = Field(default=125, ge=1, le=125)
    max_bits_per_read: int = Field(default=2000, ge=1, le=2000)
    max_gap: int = Field(default=8, ge=0, le=124)
    word_order: Order = "big"
    byte_order: Order = "big"
    tags_csv: str | None = None
    tags: list[ModbusTag] = Field(default_factory=list)

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
    devices: list[ModbusDevice] = Field(min_length=1)


class OpcuaNode(Strict):
    name: Name
    node_id: str | None = None
    browse_path: str | None = None
    topic: TopicName | None = None
    sampling_ms: int = Field(default=1000, ge=0, le=86_400_000)
    deadband: float = Field(default=0.0, ge=0)
    deadband_percent: float = Field(default=0.0, ge=0, le=100)
    queue_size: int = Field(default=1, ge=1, le=10_000)
    mode: Literal["subscribe", "poll"] = "subscribe"
    writable: bool = False

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("a node needs exactly one of 'node_id' or 'browse_path'")
        return self


class OpcuaAdapter(Strict):
    name: Name
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^\s/]+(/.*)?$")
    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    username: str | None = None
    password: str | None = None
    nodes: list[OpcuaNode] = Field(min_length=1)

    @model_validator(mode="after")
    def _security_pairs(self) -> Self:
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(
                f"security_policy {self.security_policy!r} and security_mode {self.security_mode!r} "
                "must both be 'None' or both be set"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("'username' and 'password' go together (omit both for anonymous)")
        return self


AdapterConfig = ModbusAdapter | OpcuaAdapter
ADAPTER_MODELS: dict[str, type[ModbusAdapter] | type[OpcuaAdapter]] = {
    "modbus": ModbusAdapter,
    "opcua": OpcuaAdapter,
}
