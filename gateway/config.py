"""The model of gateway.toml: identity, broker, cloud, spool, logging, resources, functions,
subscriptions and shadows, each field validated by pydantic with a safe default.

Cross-file checks (names that must exist, duplicates) live in config_loader, not here.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, model_validator

from gateway.aws_names import SHADOW_NAME_PATTERN, THING_NAME_PATTERN
from gateway.greengrass.arns import DEFAULT_DAEMON_PORT, parse_function_arn
from gateway.topics import TopicError, validate_topic_filter

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
RESERVED_IDENTITIES = frozenset({"core", "uplink", "operator"})

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ThingName = Annotated[str, Field(pattern=THING_NAME_PATTERN)]

# Set while a config already deployed is loaded to run (gateway/config_loader.py): the rules that check
# it pass what a running gateway survives (a setting that would only never take effect), so that a
# millgate upgrade which added such a rule does not stop the gateway; validate and deploy apply them.
LENIENT: ContextVar[bool] = ContextVar("lenient", default=False)


def _shadow_name(value: str) -> str:
    if LENIENT.get():
        return value  # the shadow service answers each request on it 400 Invalid shadow name
    if not re.fullmatch(SHADOW_NAME_PATTERN, value):
        raise ValueError(f"a shadow name is 1 to 64 of A-Z a-z 0-9 $ : _ - (AWS IoT's shadowName) (got {value!r})")
    return value


ShadowName = Annotated[str, AfterValidator(_shadow_name)]


def _topic_filter(value: str) -> str:
    try:
        return validate_topic_filter(value)
    except TopicError as exc:
        raise ValueError(f"invalid MQTT topic filter: {exc}") from None


TopicFilter = Annotated[str, AfterValidator(_topic_filter)]
# TOML has no path type: a non-empty string, kept as a Path (strict mode would refuse the str).
FilePath = Annotated[Path, BeforeValidator(lambda v: Path(v) if isinstance(v, str) and v else v)]


def _uid_range(value: str) -> str:
    match = re.fullmatch(r"(\d+)-(\d+)", value)
    if not match:
        raise ValueError(f"{value!r} is not 'first-last' (uids, e.g. '60100-60199')")
    first, last = int(match.group(1)), int(match.group(2))
    if not 1000 <= first <= last < 4_294_967_295 or first <= 65534 <= last:
        raise ValueError(f"{value!r}: uids from 1000 up, first <= last, without 65534 (nobody)")
    return value


class Strict(BaseModel):
    """Base for every config table: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GatewaySection(Strict):
    thing_name: ThingName
    state_dir: FilePath | None = None
    log_dir: FilePath | None = None
    status_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # uids for the uplink, each adapter and logship when run as root with the service user present
    # (gateway/component_users.py): no account may use them, nor any function's run_as. The default
    # lies below systemd's DynamicUser range (61184-65519), above adduser's (up to 59999).
    component_uids: Annotated[str, AfterValidator(_uid_range)] = "60100-60199"

    @property
    def component_uid_range(self) -> range:
        first, last = self.component_uids.split("-")
        return range(int(first), int(last) + 1)


HostName = Annotated[str, Field(pattern=r"^[A-Za-z0-9.:-]{1,253}$")]  # a DNS name or an IP address


class BrokerSection(Strict):
    tls_port: int = Field(default=8883, ge=1, le=65535)
    server_cert_days: int = Field(default=7, ge=1, le=825)
    # names and addresses the broker's certificate carries besides the detected interface addresses,
    # localhost, 127.0.0.1 and ::1 (e.g. the gateway's DNS name on the plant network)
    hostnames: list[HostName] = []
    # the core renews the server certificate once this fraction of its lifetime has passed
    server_cert_renew_at: float = Field(default=0.5, gt=0, lt=1)
    server_cert_check_s: float = Field(default=600.0, gt=0, le=86_400)  # how often the core looks
    device_cert_days: int = Field(default=365, ge=1, le=3650)  # `millgate device add` default
    ca_days: int = Field(default=1825, ge=30, le=7300)  # group CA lifetime (`millgate ca init|rotate`)
    # Routes that must not lose data are QoS 1; mosquitto's default queue of 1000 would drop under bursts.
    max_queued_messages: int = Field(default=100_000, ge=100)
    max_inflight_messages: int = Field(default=100, ge=1, le=65535)
    message_size_limit: ByteSize = Field(default=ByteSize(256 * 1024), gt=0)


class DiscoverySection(Strict):
    enabled: bool = True
    port: int = Field(default=8443, ge=1, le=65535)
    addresses: list[Annotated[str, Field(pattern=r"^[^\s:]+:\d{1,5}$")]] = []
    group_id: str | None = Field(default=None, min_length=1, max_length=128)  # default: the thing name
    # the group's name (a Greengrass v1 group's Name): AWS_GREENGRASS_GROUP_NAME of v1 functions; default: group_id
    group_name: str | None = Field(default=None, min_length=1, max_length=128)
    core_thing_arn: str | None = Field(default=None, min_length=1)  # default: a local arn for the thing


def _cloud_endpoint(value: str) -> str:
    """paho takes `endpoint` as the host to resolve: a URL or a port in it is a host name that never resolves."""
    if LENIENT.get():
        return value  # the uplink's link says it cannot resolve it
    try:
        host = urlsplit(value if "://" in value else f"//{value}").hostname
    except ValueError:  # an unbalanced '[' of an IPv6 address
        host = None
    fix = f"endpoint is the host name only ({host!r}), the port goes in `port`" if host else "give the host name only"
    if "://" in value:
        raise ValueError(f"{value!r} is a URL: {fix}")
    if re.fullmatch(r"[^:]+:\d*|\[.*\](:\d*)?", value):
        raise ValueError(f"{value!r} has a port: {fix}")
    if re.search(r"[\s/]", value):
        raise ValueError(f"{value!r} is not a host name (it has a space or '/'): {fix}")
    return value


class CloudSection(Strict):
    endpoint: Annotated[str, Field(min_length=1), AfterValidator(_cloud_endpoint)]
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: FilePath
    cert_file: FilePath
    key_file: FilePath
    # AWS IoT's MQTT on 443 needs the ALPN protocol name x-amzn-mqtt-ca; empty: no ALPN
    alpn: str = ""
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(default=None, min_length=1, max_length=128)  # default: the thing name
    keepalive_s: int = Field(default=60, ge=5, le=1200)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    reconnect_initial_s: float = Field(default=1.0, gt=0, le=60)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    # QoS 1 publishes awaiting PUBACK at once; AWS IoT allows 100 per connection
    inflight_window: int = Field(default=100, ge=1, le=65535)
    # AWS IoT refuses bigger payloads; bigger messages go to the dead letters, never to the cloud
    max_payload_bytes: ByteSize = Field(default=ByteSize(128 * 1024), gt=0)
    # a message the cloud refused this many times goes to the dead letters instead of blocking its topic
    dead_letter_after: int = Field(default=5, ge=1, le=1000)


def _spool_prefix(value: str) -> str:
    # storage/spool.py matches with str.startswith, and a topic never holds '+' or '#' (MQTT 4.7.1)
    if ("+" in value or "#" in value) and not LENIENT.get():
        plain = f" (e.g. {value.rstrip('#')!r})" if value.endswith("#") and "+" not in value else ""
        raise ValueError(
            f"{value!r}: a prefix is plain text matched at the start of a topic, not a topic filter; "
            f"'+' and '#' never match{plain}"
        )
    return value


class SpoolRule(Strict):
    """Drain priority and time-to-live for cloud-bound topics starting with `prefix` (longest wins)."""

    prefix: Annotated[str, Field(min_length=1), AfterValidator(_spool_prefix)]
    priority: int = Field(default=0, ge=-100, le=100)
    ttl_s: float | None = Field(default=None, gt=0)


class SpoolSection(Strict):
    max_bytes: ByteSize = Field(default=ByteSize(1_000_000_000), gt=0)
    policy: Literal["drop-oldest", "reject-new"] = "drop-oldest"
    # group commit: one fsync for every message that arrived while the previous commit ran, up to this many
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    topics: list[SpoolRule] = []
    # what can never be sent is kept for the operator up to this size; beyond it the oldest go, counted
    dead_letter_max_bytes: ByteSize = Field(default=ByteSize(64 * 1024 * 1024), gt=0)


def _window(value: str) -> str:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)", value)
    if not match:
        raise ValueError(f"{value!r} is not a window 'HH:MM-HH:MM' (e.g. '01:00-04:00')")
    return value


# what a bulk key prefix may name (gateway/uplink/bulk_upload.object_key fills them), with sample values
BULK_PREFIX_PLACEHOLDERS = {
    "thing": "plant-a-gw1",
    "yyyy": "2024",
    "mm": "01",
    "dd": "31",
    "hh": "23",
    "date": "2024-01-31",
}


def _bulk_prefix(value: str) -> str:
    names = " ".join(f"{{{name}}}" for name in BULK_PREFIX_PLACEHOLDERS)
    try:
        value.format(**BULK_PREFIX_PLACEHOLDERS)
    except KeyError as exc:
        raise ValueError(f"unknown placeholder {{{exc.args[0]}}} in {value!r}; the placeholders are {names}") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"{value!r} is not a key template ({exc}); the placeholders are {names}, a literal brace is {{{{ or }}}}"
        ) from None
    return value


class BulkSection(Strict):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    # placeholders: BULK_PREFIX_PLACEHOLDERS, the UTC time of the batch's first record. No {topic}: a
    # batch mixes every bulk topic
    prefix: Annotated[str, AfterValidator(_bulk_prefix)] = "{thing}/{yyyy}/{mm}/{dd}/"
    topics: list[TopicFilter] = Field(min_length=1)
    max_batch_bytes: ByteSize = Field(default=ByteSize(8_000_000), ge=1024)
    max_batch_age_s: float = Field(default=300.0, gt=0, le=7 * 86400)
    # local-time windows "HH:MM-HH:MM" (may span midnight); empty: upload whenever a batch is ready
    windows: list[Annotated[str, AfterValidator(_window)]] = []
    region: str | None = None
    endpoint_url: str | None = None  # an S3-compatible store (MinIO...) instead of AWS
    upload_timeout_s: float = Field(default=600.0, gt=0)
    multipart_threshold: ByteSize = Field(default=ByteSize(8 * 1024 * 1024), ge=5 * 1024 * 1024)
    # cap on waiting records plus batch files on disk; beyond it [spool] policy applies (counted, logged)
    max_bytes: ByteSize = Field(default=ByteSize(1_000_000_000), ge=1024 * 1024)


class CloudWatchSection(Strict):
    """Ship system and function logs to CloudWatch Logs (a log stream per component)."""

    enabled: bool = True
    log_group: str = Field(default="/millgate/{thing}", pattern=r"^[.\-_/#A-Za-z0-9{}]{1,512}$")  # {thing}
    region: str | None = None
    endpoint_url: str | None = None  # a CloudWatch Logs-compatible endpoint instead of AWS's
    flush_interval_s: float = Field(default=5.0, gt=0, le=3600)  # how often new log lines are sent
    # lines kept while CloudWatch is unreachable; beyond it the oldest are dropped (and counted)
    buffer_max_bytes: ByteSize = Field(default=ByteSize(10_000_000), ge=64 * 1024)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)


LogLevel = Literal["debug", "info", "warning", "error"]


class LoggingSection(Strict):
    level: LogLevel = "info"
    # per component (program name: core, uplink, adapter-line1, fn-aggregate...), over `level`
    levels: dict[str, LogLevel] = {}
    max_bytes_per_component: ByteSize = Field(default=ByteSize(25_000_000), ge=64 * 1024)
    cloudwatch: CloudWatchSection | None = None


class DeploymentSection(Strict):
    """`millgate deploy`: how long new processes get to come up healthy before the deployment rolls back."""

    health_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # a started process must stay healthy this long after its first good heartbeat (init failures show late)
    settle_s: float = Field(default=3.0, ge=0, le=600)
    keep: int = Field(default=5, ge=2, le=100)  # config snapshots kept under <state>/deployments
    # cloud-driven deployments and core OTA: desired.deployment / desired.package in the gateway's own shadow
    cloud: bool = True  # false: the core ignores both
    s3_region: str | None = None  # default: the AWS chain's region
    s3_endpoint_url: str | None = None  # an S3-compatible store (MinIO, moto...) instead of AWS
    fetch_timeout_s: float = Field(default=300.0, gt=0, le=3600)  # one bundle or package download
    max_bundle_bytes: ByteSize = Field(default=ByteSize(256 * 1024 * 1024), gt=0)  # unpacked size cap
    # {deb} is the package file; the command runs detached from the service it replaces
    ota_install_command: str = Field(default="dpkg -i {deb}", min_length=1)
    # before the first OTA (no package kept yet): rebuild the installed one from its files, in a scratch
    # directory, so that a bad update can still be rolled back (Debian's dpkg-repack, a dependency)
    ota_keep_command: str = Field(default="dpkg-repack millgate", min_length=1)
    ota_restart_command: str = Field(default="systemctl restart millgate.service", min_length=1)
    # the restarted gateway must show a fresh core heartbeat this soon, or the previous package goes back
    ota_health_timeout_s: float = Field(default=120.0, gt=0, le=3600)


class Resource(Strict):
    name: Name
    kind: Literal["device", "volume", "model"]
    # device, volume: the host path. model: where the function finds it, below $AWS_GG_RESOURCE_PREFIX
    # (Greengrass v1's DestinationPath); $MILLGATE_RESOURCE_<NAME> names the same directory
    path: str = Field(min_length=1)
    # volume only: where the function sees it (an absolute path, bind-mounted there in the function's own
    # mount namespace; its empty mount point is created on the host if missing). Default: at `path`
    destination: str | None = Field(default=None, min_length=1)
    group_owner: bool = False
    # model only: what is unpacked read-only for each function that is granted it, at every deployment:
    # a file, a directory, a .zip or a .tar.gz (relative: to the config dir), or s3://bucket/key.
    # Without it the model is already on the gateway at `path`, granted read-only like a volume.
    source: str | None = Field(default=None, min_length=1)
    region: str | None = None  # model from S3: default the AWS chain's region
    endpoint_url: str | None = None  # model from S3: an S3-compatible store (MinIO...) instead of AWS
    fetch_timeout_s: float = Field(default=300.0, gt=0, le=3600)  # model from S3: the whole download

    @model_validator(mode="after")
    def _source_only_for_models(self) -> Resource:
        if self.kind != "model":
            extra = [k for k in ("source", "region", "endpoint_url") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f'{", ".join(extra)}: only for kind = "model"')
        if self.destination is not None and self.kind != "volume":
            raise ValueError('destination: only for kind = "volume"')
        if self.source is not None and self.source.startswith("s3://") and "/" not in self.source[5:].strip("/"):
            raise ValueError(f"source {self.source!r} is not s3://bucket/key")
        return self


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


def _function_arn(value: str) -> str:
    parse_function_arn(value)
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
    idle_s: float = Field(default=60.0, gt=0, le=86_400)  # an on-demand worker idle this long is stopped
    log_max_bytes: ByteSize = Field(default=ByteSize(25_000_000), ge=64 * 1024)  # the function's log files
    environment: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {}
    resources: list[ResourceGrant] = []
    # Greengrass v1 drop-in (docs/greengrass-v1.md): "greengrass-v1" runs an unmodified v1 function
    # (greengrasssdk against the core's v1 HTTP API on 127.0.0.1); "native" uses `functions.sdk`
    runtime: Literal["native", "greengrass-v1"] = "native"
    encoding: Literal["json", "binary"] = "json"  # v1 EncodingType: events as decoded JSON, or raw bytes
    # v1 only: the function's Lambda ARN, kept as MY_FUNCTION_ARN (qualified with the deployed code
    # version when it has no qualifier); default: arn:aws:lambda:<AWS_REGION>:000000000000:function:<name>
    arn: Annotated[str, AfterValidator(_function_arn)] | None = None
    # v1 only: GG_DAEMON_PORT, where the core serves the v1 HTTP API on 127.0.0.1 (old bundled IPC
    # clients are fixed to 8000)
    daemon_port: int = Field(default=DEFAULT_DAEMON_PORT, ge=1024, le=65535)

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
    name: ShadowName | None = None
    sync: Literal["none", "local-to-cloud", "cloud-to-local", "both"] = "none"


class GatewayConfig(Strict):
    gateway: GatewaySection
    broker: BrokerSection = BrokerSection()
    discovery: DiscoverySection = DiscoverySection()
    cloud: CloudSection | None = None
    spool: SpoolSection = SpoolSection()
    bulk: BulkSection | None = None
    logging: LoggingSection = LoggingSection()
    deployment: DeploymentSection = DeploymentSection()
    resources: list[Resource] = []
    functions: list[Function] = []
    subscriptions: list[Subscription] = []
    shadows: list[ShadowSync] = []
