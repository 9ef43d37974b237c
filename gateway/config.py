"""The model of gateway.toml: identity, broker, cloud, spool, logging, resources, functions,
subscriptions and shadows, each field validated by pydantic with a safe default.

Cross-file checks (names that must exist, duplicates) live in config_loader, not here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ByteSize, ConfigDict, Field

from gateway.topics import TopicError, validate_topic_filter

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
THING_PATTERN = r"^[A-Za-z0-9:_-]{1,128}$"  # AWS IoT thing names
RESERVED_IDENTITIES = frozenset({"core", "uplink", "operator"})

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ThingName = Annotated[str, Field(pattern=THING_PATTERN)]


def _topic_filter(value: str) -> str:
    try:
        return validate_topic_filter(value)
    except TopicError as exc:
        raise ValueError(f"invalid MQTT topic filter: {exc}") from None


TopicFilter = Annotated[str, AfterValidator(_topic_filter)]
# TOML has no path type: a non-empty string, kept as a Path (strict mode would refuse the str).
FilePath = Annotated[Path, BeforeValidator(lambda v: Path(v) if isinstance(v, str) and v else v)]


class Strict(BaseModel):
    """Base for every config table: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GatewaySection(Strict):
    thing_name: ThingName
    state_dir: FilePath | None = None
    log_dir: FilePath | None = None
    status_interval_s: float = Field(default=5.0, gt=0, le=3600)


class BrokerSection(Strict):
    tls_port: int = Field(default=8883, ge=1, le=65535)
    server_cert_days: int = Field(default=7, ge=1, le=825)
    # Routes that must not lose data are QoS 1; mosquitto's default queue of 1000 would drop under bursts.
    max_queued_messages: int = Field(default=100_000, ge=100)
    max_inflight_messages: int = Field(default=100, ge=1, le=65535)
    message_size_limit: ByteSize = Field(default=ByteSize(256 * 1024), gt=0)


class DiscoverySection(Strict):
    port: int = Field(default=8443, ge=1, le=65535)
    addresses: list[Annotated[str, Field(pattern=r"^[^\s:]+:\d{1,5}$")]] = []


class CloudSection(Strict):
    endpoint: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: FilePath
    cert_file: FilePath
    key_file: FilePath


class SpoolSection(Strict):
    max_bytes: ByteSize = Field(default=ByteSize(1_000_000_000), gt=0)
    policy: Literal["drop-oldest", "reject-new"] = "drop-oldest"


class LoggingSection(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    max_bytes_per_component: ByteSize = Field(default=ByteSize(25_000_000), ge=64 * 1024)


class Resource(Strict):
    name: Name
    kind: Literal["device", "volume", "model"]
    path: str = Field(min_length=1)
    group_owner: bool = False


class ResourceGrant(Strict):
    name: Name
    access: Literal["ro", "rw"] = "ro"


def _run_as(value: str) -> str:
    match = re.fullmatch(r"(\d+):(\d+)", value)
    if not match:
        raise ValueError(f"{value!r} is not 'uid:gid' (numbers, e.g. '1001:1001')")
    if int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise ValueError(f"{value!r}: functions never run as root (uid or gid 0)")
    return value


class Function(Strict):
    name: Name
    code: str = Field(min_length=1)
    handler: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
    lifecycle: Literal["on-demand", "long-lived"] = "on-demand"
    run_as: Annotated[str, AfterValidator(_run_as)]
    timeout_s: float = Field(default=3.0, gt=0, le=900)
    memory_mb: int = Field(default=64, ge=16, le=65536)
    max_concurrency: int = Field(default=1, ge=1, le=256)
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    environment: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {}
    resources: list[ResourceGrant] = []

    @property
    def uid(self) -> int:
        return int(self.run_as.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.run_as.split(":")[1])


ENDPOINT_PATTERN = r"^(cloud|shadow|(device|function|adapter):[A-Za-z0-9_][A-Za-z0-9_.:-]*)$"
Endpoint = Annotated[str, Field(pattern=ENDPOINT_PATTERN)]


class Subscription(Strict):
    source: Endpoint
    target: Endpoint
    topic: TopicFilter


class ShadowSync(Strict):
    thing: ThingName
    name: Name | None = None
    sync: Literal["none", "local-to-cloud", "cloud-to-local", "both"] = "none"


class GatewayConfig(Strict):
    gateway: GatewaySection
    broker: BrokerSection = BrokerSection()
    discovery: DiscoverySection = DiscoverySection()
    cloud: CloudSection | None = None
    spool: SpoolSection = SpoolSection()
    logging: LoggingSection = LoggingSection()
    resources: list[Resource] = []
    functions: list[Function] = []
    subscriptions: list[Subscription] = []
    shadows: list[ShadowSync] = []
