"""A Greengrass v1 group export as the AWS CLI prints it (`aws greengrass get-group-version` and the
`get-*-definition-version` commands; shapes from the AWS IoT Greengrass v1 API reference), and v1
functions packaged as v1 users packaged them: a zip with the handler and greengrasssdk inside.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-west-2"
ACCOUNT = "123456789012"
GROUP_ID = "4e2f1a7c-0b1d-4c1e-9a51-6f3c2a8d7e10"
GROUP_NAME = "plant-a-line-1"


def function_arn(name: str, qualifier: str = "1") -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}:{qualifier}"


def thing_arn(thing: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{thing}"


def definition_arn(kind: str, version: str = "v1") -> str:
    return f"arn:aws:greengrass:{REGION}:{ACCOUNT}:/greengrass/definition/{kind}/{kind}-def/versions/{version}"


@dataclass
class V1Function:
    name: str
    source: str
    pinned: bool = False
    encoding: str = "json"
    timeout: int = 5
    memory_kb: int = 65536
    variables: dict[str, str] = field(default_factory=dict)
    run_as: tuple[int, int] | None = None
    resources: list[tuple[str, str]] = field(default_factory=list)  # (resource id, ro|rw)
    bundled: dict[str, str] = field(default_factory=dict)  # more files in the zip: path -> source

    @property
    def arn(self) -> str:
        return function_arn(self.name)

    def definition(self) -> dict[str, Any]:
        environment: dict[str, Any] = {
            "Variables": self.variables,
            "ResourceAccessPolicies": [{"ResourceId": rid, "Permission": perm} for rid, perm in self.resources],
            "AccessSysfs": False,
        }
        if self.run_as:
            environment["Execution"] = {
                "IsolationMode": "NoContainer",
                "RunAs": {"Uid": self.run_as[0], "Gid": self.run_as[1]},
            }
        return {
            "Id": f"fn-{self.name}",
            "FunctionArn": self.arn,
            "FunctionConfiguration": {
                "EncodingType": self.encoding,
                "Environment": environment,
                "ExecArgs": "",
                "Executable": f"{self.name}.function_handler",
                "MemorySize": self.memory_kb,
                "Pinned": self.pinned,
                "Timeout": self.timeout,
            },
        }


def package(function: V1Function, sdk_dir: Path, out_dir: Path) -> Path:
    """The deployment zip: the handler module at the top, greengrasssdk beside it (as the v1 docs said)."""
    path = out_dir / f"{function.name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{function.name}.py", function.source)
        for name, source in sorted(function.bundled.items()):
            archive.writestr(name, source)
        for file in sorted((sdk_dir / "greengrasssdk").rglob("*.py")):
            archive.write(file, str(file.relative_to(sdk_dir)))
    return path


def _version(kind: str, definition: dict[str, Any]) -> dict[str, Any]:
    return {
        "Arn": definition_arn(kind),
        "CreationTimestamp": "2024-03-01T09:00:00.000Z",
        "Definition": definition,
        "Id": f"{kind}-def",
        "Version": "v1",
    }


def write_export(
    directory: Path,
    core_thing: str,
    functions: list[V1Function],
    subscriptions: list[tuple[str, str, str]],
    devices: list[str],
    resources: list[dict[str, Any]] | None = None,
    extra_functions: list[dict[str, Any]] | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {
        "group.json": {
            "Arn": f"arn:aws:greengrass:{REGION}:{ACCOUNT}:/greengrass/groups/{GROUP_ID}",
            "CreationTimestamp": "2024-03-01T09:00:00.000Z",
            "Id": GROUP_ID,
            "LastUpdatedTimestamp": "2024-03-01T09:00:00.000Z",
            "LatestVersion": "gv1",
            "LatestVersionArn": f"arn:aws:greengrass:{REGION}:{ACCOUNT}:/greengrass/groups/{GROUP_ID}/versions/gv1",
            "Name": GROUP_NAME,
        },
        "group-version.json": {
            "Arn": f"arn:aws:greengrass:{REGION}:{ACCOUNT}:/greengrass/groups/{GROUP_ID}/versions/gv1",
            "CreationTimestamp": "2024-03-01T09:00:00.000Z",
            "Definition": {
                "CoreDefinitionVersionArn": definition_arn("cores"),
                "DeviceDefinitionVersionArn": definition_arn("devices"),
                "FunctionDefinitionVersionArn": definition_arn("functions"),
                "LoggerDefinitionVersionArn": definition_arn("loggers"),
                "ResourceDefinitionVersionArn": definition_arn("resources"),
                "SubscriptionDefinitionVersionArn": definition_arn("subscriptions"),
            },
            "Id": GROUP_ID,
            "Version": "gv1",
        },
        "core-definition-version.json": _version(
            "cores",
            {
                "Cores": [
                    {
                        "CertificateArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/0123abcd",
                        "Id": "core-1",
                        "SyncShadow": True,
                        "ThingArn": thing_arn(core_thing),
                    }
                ]
            },
        ),
        "device-definition-version.json": _version(
            "devices",
            {
                "Devices": [
                    {
                        "CertificateArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/{d}",
                        "Id": f"dev-{d}",
                        "SyncShadow": False,
                        "ThingArn": thing_arn(d),
                    }
                    for d in devices
                ]
            },
        ),
        "function-definition-version.json": _version(
            "functions",
            {
                "DefaultConfig": {
                    "Execution": {"IsolationMode": "GreengrassContainer", "RunAs": {"Uid": 1101, "Gid": 1101}}
                },
                "Functions": [f.definition() for f in functions] + (extra_functions or []),
            },
        ),
        "logger-definition-version.json": _version(
            "loggers",
            {
                "Loggers": [
                    {
                        "Component": "GreengrassSystem",
                        "Id": "sys",
                        "Level": "INFO",
                        "Space": 25600,
                        "Type": "FileSystem",
                    },
                    {"Component": "Lambda", "Id": "fn", "Level": "DEBUG", "Space": 10240, "Type": "FileSystem"},
                    {"Component": "Lambda", "Id": "cw", "Level": "WARN", "Type": "AWSCloudWatch"},
                ]
            },
        ),
        "resource-definition-version.json": _version("resources", {"Resources": resources or []}),
        "subscription-definition-version.json": _version(
            "subscriptions",
            {
                "Subscriptions": [
                    {"Id": f"sub-{index}", "Source": source, "Subject": subject, "Target": target}
                    for index, (source, subject, target) in enumerate(subscriptions)
                ]
            },
        ),
    }
    for name, document in files.items():
        (directory / name).write_text(json.dumps(document, indent=2))
