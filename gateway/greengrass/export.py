"""A Greengrass v1 group as the AWS CLI prints it (get-group-version and the get-*-definition-version
outputs): the strict models of that JSON and reading an export directory into them. An unknown field or
a malformed ARN is an error naming the file and the item. It maps and writes nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from gateway.config_loader import key_path

GROUP_FILE = "group.json"  # aws greengrass get-group (optional: the group's name)
GROUP_VERSION_FILE = "group-version.json"  # aws greengrass get-group-version
# group version key -> (the file holding that definition version, what it is called in messages)
DEFINITIONS = {
    "CoreDefinitionVersionArn": ("core-definition-version.json", "core"),
    "FunctionDefinitionVersionArn": ("function-definition-version.json", "function"),
    "SubscriptionDefinitionVersionArn": ("subscription-definition-version.json", "subscription"),
    "ResourceDefinitionVersionArn": ("resource-definition-version.json", "resource"),
    "LoggerDefinitionVersionArn": ("logger-definition-version.json", "logger"),
    "DeviceDefinitionVersionArn": ("device-definition-version.json", "device"),
    "ConnectorDefinitionVersionArn": ("connector-definition-version.json", "connector"),
}
DEFINITION_VERSION_ARN = re.compile(
    r"^arn:aws[a-z-]*:greengrass:[a-z0-9-]+:[0-9]{12}:/greengrass/definition/[a-z]+/[^/]+/versions/[^/]+$"
)


class ImportFailed(Exception):
    """The export cannot be imported; nothing was written. The message names the file and the item."""


# ---- the export, as the AWS API reference defines it ------------------------------------------------


class Aws(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class V1RunAs(Aws):
    Uid: int | None = None
    Gid: int | None = None


class V1Execution(Aws):
    IsolationMode: str | None = None
    RunAs: V1RunAs | None = None


class V1DefaultConfig(Aws):
    Execution: V1Execution | None = None


class ResourceAccessPolicy(Aws):
    Permission: str | None = None
    ResourceId: str


class FunctionEnvironment(Aws):
    AccessSysfs: bool | None = None
    Execution: V1Execution | None = None
    ResourceAccessPolicies: list[ResourceAccessPolicy] = []
    Variables: dict[str, str] = {}


class V1FunctionConfiguration(Aws):
    EncodingType: str | None = None
    Environment: FunctionEnvironment | None = None
    ExecArgs: str | None = None
    Executable: str | None = None
    FunctionRuntimeOverride: str | None = None
    MemorySize: int | None = None  # KB
    Pinned: bool | None = None
    Timeout: int | None = None  # seconds


class V1Function(Aws):
    FunctionArn: str | None = None
    FunctionConfiguration: V1FunctionConfiguration | None = None
    Id: str


class FunctionDefinition(Aws):
    DefaultConfig: V1DefaultConfig | None = None
    Functions: list[V1Function] = []


class Thing(Aws):
    CertificateArn: str | None = None
    Id: str
    SyncShadow: bool | None = None
    ThingArn: str


class CoreDefinition(Aws):
    Cores: list[Thing] = []


class DeviceDefinition(Aws):
    Devices: list[Thing] = []


class V1Subscription(Aws):
    Id: str
    Source: str
    Subject: str
    Target: str


class SubscriptionDefinition(Aws):
    Subscriptions: list[V1Subscription] = []


class V1Logger(Aws):
    Component: str
    Id: str
    Level: str
    Space: int | None = None  # KB
    Type: str


class LoggerDefinition(Aws):
    Loggers: list[V1Logger] = []


class V1GroupOwnerSetting(Aws):
    AutoAddGroupOwner: bool | None = None
    GroupOwner: str | None = None


class V1OwnerSetting(Aws):
    GroupOwner: str | None = None
    GroupPermission: str | None = None


class LocalDevice(Aws):
    GroupOwnerSetting: V1GroupOwnerSetting | None = None
    SourcePath: str


class LocalVolume(Aws):
    DestinationPath: str | None = None
    GroupOwnerSetting: V1GroupOwnerSetting | None = None
    SourcePath: str


class S3Model(Aws):
    DestinationPath: str
    OwnerSetting: V1OwnerSetting | None = None
    S3Uri: str | None = None


class SageMakerModel(Aws):
    DestinationPath: str
    OwnerSetting: V1OwnerSetting | None = None
    SageMakerJobArn: str | None = None


class SecretResource(Aws):
    ARN: str | None = None
    AdditionalStagingLabelsToDownload: list[str] = []


class ResourceData(Aws):
    LocalDeviceResourceData: LocalDevice | None = None
    LocalVolumeResourceData: LocalVolume | None = None
    S3MachineLearningModelResourceData: S3Model | None = None
    SageMakerMachineLearningModelResourceData: SageMakerModel | None = None
    SecretsManagerSecretResourceData: SecretResource | None = None


class V1Resource(Aws):
    Id: str
    Name: str
    ResourceDataContainer: ResourceData


class ResourceDefinition(Aws):
    Resources: list[V1Resource] = []


class V1Connector(Aws):
    ConnectorArn: str
    Id: str
    Parameters: dict[str, str] = {}


class ConnectorDefinition(Aws):
    Connectors: list[V1Connector] = []


class GroupVersionDefinition(Aws):
    CoreDefinitionVersionArn: str | None = None
    ConnectorDefinitionVersionArn: str | None = None
    DeviceDefinitionVersionArn: str | None = None
    FunctionDefinitionVersionArn: str | None = None
    LoggerDefinitionVersionArn: str | None = None
    ResourceDefinitionVersionArn: str | None = None
    SubscriptionDefinitionVersionArn: str | None = None


class VersionOutput(Aws):
    """What every get-*-version command prints around its Definition."""

    Arn: str | None = None
    CreationTimestamp: str | None = None
    Id: str | None = None
    Version: str | None = None
    NextToken: str | None = None


class GroupVersionOutput(VersionOutput):
    Definition: GroupVersionDefinition


class GroupOutput(Aws):
    Arn: str | None = None
    CreationTimestamp: str | None = None
    Id: str | None = None
    LastUpdatedTimestamp: str | None = None
    LatestVersion: str | None = None
    LatestVersionArn: str | None = None
    Name: str | None = None


DEFINITION_MODELS: dict[str, type[Aws]] = {
    "core": CoreDefinition,
    "function": FunctionDefinition,
    "subscription": SubscriptionDefinition,
    "resource": ResourceDefinition,
    "logger": LoggerDefinition,
    "device": DeviceDefinition,
    "connector": ConnectorDefinition,
}


def _read(path: Path, model: type[Aws]) -> Any:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportFailed(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFailed(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ImportFailed(f"{path}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            what = "unknown field" if error["type"] == "extra_forbidden" else str(error["msg"])
            problems.append(f"{path}: {key_path(error['loc'])}: {what}")
        raise ImportFailed("\n".join(problems)) from None


def _definition_model(kind: str) -> type[Aws]:
    definition = DEFINITION_MODELS[kind]
    return create_model(f"{definition.__name__}Output", __base__=VersionOutput, Definition=(definition, ...))


@dataclass
class Export:
    directory: Path
    group_id: str | None
    group_name: str | None
    definitions: dict[str, Any] = field(default_factory=dict)  # kind -> Definition model

    def file(self, kind: str) -> Path:
        return self.directory / next(f for f, k in DEFINITIONS.values() if k == kind)


def read_export(directory: Path) -> Export:
    if not directory.is_dir():
        raise ImportFailed(f"{directory}: not a directory (expected the JSON files of `aws greengrass get-*`)")
    version: GroupVersionOutput = _read(directory / GROUP_VERSION_FILE, GroupVersionOutput)
    group: GroupOutput | None = None
    if (directory / GROUP_FILE).exists():
        group = _read(directory / GROUP_FILE, GroupOutput)
    export = Export(directory, version.Id or (group.Id if group else None), group.Name if group else None)
    for key, (filename, kind) in DEFINITIONS.items():
        referenced = getattr(version.Definition, key)
        if referenced is None:
            continue
        where = f"{directory / GROUP_VERSION_FILE}: Definition.{key}"
        if not DEFINITION_VERSION_ARN.fullmatch(referenced):
            raise ImportFailed(f"{where}: {referenced!r} is not a Greengrass definition version ARN")
        path = directory / filename
        if not path.exists():
            raise ImportFailed(
                f"{path}: missing: the group version references the {kind} definition version {referenced} "
                f"(aws greengrass get-{kind}-definition-version > {filename})"
            )
        output = _read(path, _definition_model(kind))
        if output.Arn is not None and output.Arn != referenced:
            raise ImportFailed(f"{path}: Arn: {output.Arn} is not the version the group uses ({referenced})")
        export.definitions[kind] = output.Definition
    if "core" not in export.definitions:
        raise ImportFailed(f"{directory / GROUP_VERSION_FILE}: Definition.CoreDefinitionVersionArn: missing")
    return export


# ---- mapping -----------------------------------------------------------------------------------------
