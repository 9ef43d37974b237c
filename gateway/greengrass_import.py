"""`millgate import greengrass-v1`: maps a Greengrass v1 group, as the AWS CLI prints it
(get-group-version and get-*-definition-version), and the functions' deployment zips onto a millgate
config, noting whatever has no millgate equivalent and why.

Reading the export is gateway/greengrass/export.py's job, writing the config dir
gateway/greengrass_config_writer.py's, the command line gateway/greengrass_import_cli.py's.
"""

from __future__ import annotations

import grp
import math
import pwd
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.aws_names import THING_NAME_PATTERN
from gateway.config import RESERVED_IDENTITIES
from gateway.greengrass.arns import (
    DEFAULT_DAEMON_PORT,
    ArnError,
    FunctionArn,
    parse_function_arn,
    parse_thing_arn,
    system_function_name,
)
from gateway.greengrass.export import (
    ConnectorDefinition,
    CoreDefinition,
    DeviceDefinition,
    Export,
    FunctionDefinition,
    FunctionEnvironment,
    ImportFailed,
    LoggerDefinition,
    ResourceDefinition,
    SubscriptionDefinition,
    V1Execution,
    V1FunctionConfiguration,
    read_export,
)
from gateway.greengrass_config_writer import write_config
from gateway.resource_paths import SYSTEM_DIRS, destination_path_refusal, host_path_refusal
from gateway.topics import TopicError, validate_topic_filter

LOG_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARN": "warning", "ERROR": "error", "FATAL": "error"}
MIN_LOG_BYTES = 64 * 1024
ON_DEMAND_CONCURRENCY = 4  # v1 started containers as needed; a gateway wants a bound
CONTAINER_MEMORY_KB = 16384  # a containerised function's MemorySize when the export has none
UNCAPPED_MEMORY_MB = 65536  # the largest memory_mb: a function that v1 ran with no memory cap


@dataclass
class Plan:
    """The millgate config being built, and the notes on what did not map."""

    thing_name: str = ""
    group_id: str | None = None
    group_name: str | None = None
    logging: dict[str, Any] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    functions: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    shadows: list[dict[str, Any]] = field(default_factory=list)
    code: dict[str, Path] = field(default_factory=dict)  # function name -> its zip or directory
    devices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, where: str, what: str) -> None:
        self.notes.append(f"{where}: {what}")


def _safe_name(name: str, taken: set[str]) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:120] or "resource"
    if not re.match(r"[A-Za-z0-9_]", cleaned):
        cleaned = f"r{cleaned}"
    candidate, counter = cleaned, 2
    while candidate in taken:
        candidate, counter = f"{cleaned}-{counter}", counter + 1
    taken.add(candidate)
    return candidate


def _default_run_as(given: str | None) -> str | None:
    if given:
        return given
    try:
        return f"{pwd.getpwnam('ggc_user').pw_uid}:{grp.getgrnam('ggc_group').gr_gid}"
    except KeyError:
        return None


def _map_core(export: Export, plan: Plan) -> None:
    cores: CoreDefinition = export.definitions["core"]
    where = f"{export.file('core')}: Definition.Cores"
    if len(cores.Cores) != 1:
        raise ImportFailed(f"{where}: a group has exactly one core (found {len(cores.Cores)})")
    core = cores.Cores[0]
    try:
        plan.thing_name = parse_thing_arn(core.ThingArn)
    except ArnError as exc:
        raise ImportFailed(f"{where}[0].ThingArn: {exc}") from None
    if core.SyncShadow:
        plan.shadows.append({"thing": plan.thing_name, "sync": "both"})
    plan.group_id = export.group_id
    plan.group_name = export.group_name
    if core.CertificateArn:
        plan.note("core", "the core's AWS IoT certificate is not imported: set [cloud] cert_file/key_file to it")


def _map_devices(export: Export, plan: Plan) -> None:
    devices: DeviceDefinition | None = export.definitions.get("device")
    for index, device in enumerate(devices.Devices if devices else []):
        try:
            thing = parse_thing_arn(device.ThingArn)
        except ArnError as exc:
            raise ImportFailed(f"{export.file('device')}: Definition.Devices[{index}].ThingArn: {exc}") from None
        plan.devices.append(thing)
        if device.SyncShadow:
            plan.shadows.append({"thing": thing, "sync": "both"})


def _map_loggers(export: Export, plan: Plan) -> int | None:
    """Sets the system log level and cap; returns the per-function log cap in bytes, if any."""
    loggers: LoggerDefinition | None = export.definitions.get("logger")
    function_cap = None
    for index, logger in enumerate(loggers.Loggers if loggers else []):
        where = f"{export.file('logger')}: Definition.Loggers[{index}]"
        if logger.Type != "FileSystem":
            plan.note(where, f"{logger.Type} logging of {logger.Component} is not mapped (logs stay on the gateway)")
            continue
        space = max(int(logger.Space or 0) * 1024, MIN_LOG_BYTES) if logger.Space else None
        if logger.Component == "GreengrassSystem":
            level = LOG_LEVELS.get(logger.Level)
            if level is None:
                raise ImportFailed(f"{where}.Level: {logger.Level!r} is not one of {', '.join(LOG_LEVELS)}")
            plan.logging["level"] = level
            if space:
                plan.logging["max_bytes_per_component"] = space
        elif logger.Component == "Lambda":
            function_cap = space
            if logger.Level != "INFO":
                plan.note(where, f"level {logger.Level}: a function's log keeps everything it writes")
        else:
            raise ImportFailed(f"{where}.Component: {logger.Component!r} is neither GreengrassSystem nor Lambda")
    return function_cap


def _map_resources(export: Export, plan: Plan) -> dict[str, str | None]:
    """v1 resource id -> millgate resource name (None: not mapped, its grants are dropped)."""
    resources: ResourceDefinition | None = export.definitions.get("resource")
    by_id: dict[str, str | None] = {}
    taken: set[str] = set()
    for index, resource in enumerate(resources.Resources if resources else []):
        where = f"{export.file('resource')}: Definition.Resources[{index}] ({resource.Name})"
        data = resource.ResourceDataContainer
        kind: str | None = None
        path = ""
        group_owner = False
        source: str | None = None
        destination: str | None = None
        if data.LocalDeviceResourceData is not None:
            kind, path = "device", data.LocalDeviceResourceData.SourcePath
            owner = data.LocalDeviceResourceData.GroupOwnerSetting
            group_owner = bool(owner and owner.AutoAddGroupOwner)
            if owner and owner.GroupOwner:
                plan.note(where, f"GroupOwner {owner.GroupOwner!r}: millgate adds the device file's own group only")
        elif data.LocalVolumeResourceData is not None:
            volume = data.LocalVolumeResourceData
            kind, path = "volume", volume.SourcePath
            group_owner = bool(volume.GroupOwnerSetting and volume.GroupOwnerSetting.AutoAddGroupOwner)
            if volume.DestinationPath and volume.DestinationPath != volume.SourcePath:
                refused = destination_path_refusal(volume.DestinationPath, SYSTEM_DIRS)
                if refused is None:
                    destination = volume.DestinationPath  # mounted there in the function's own namespace
                else:
                    plan.note(
                        where,
                        f"the function saw it at {volume.DestinationPath}, which millgate refuses as a "
                        f"destination ({refused}); it is at {volume.SourcePath} (change the function)",
                    )
        elif data.S3MachineLearningModelResourceData is not None:
            model = data.S3MachineLearningModelResourceData
            kind, path = "model", model.DestinationPath
            source = _model_source(model.S3Uri)
            if source is None:
                plan.note(where, f"S3Uri {model.S3Uri!r} is not s3://bucket/key: set the model's source yourself")
        elif data.SageMakerMachineLearningModelResourceData is not None:
            sagemaker = data.SageMakerMachineLearningModelResourceData
            kind, path = "model", sagemaker.DestinationPath
            # the job's artefact location lives in SageMaker, which an offline import cannot ask
            plan.note(
                where,
                f"model of {sagemaker.SageMakerJobArn}: set its source to the job's S3 artefact "
                "(aws sagemaker describe-training-job ... --query ModelArtifacts.S3ModelArtifacts)",
            )
        elif data.SecretsManagerSecretResourceData is not None:
            plan.note(where, "secret resources are not supported: pass the secret in the function's environment")
        else:
            raise ImportFailed(f"{where}.ResourceDataContainer: no resource data")
        if kind is not None and not path.startswith("/"):
            raise ImportFailed(f"{where}: {path!r} is not an absolute path")
        in_place = kind in ("device", "volume") or (kind == "model" and source is None)
        refused = host_path_refusal(kind, path, SYSTEM_DIRS) if kind is not None and in_place else None
        if refused:
            plan.note(where, f"{kind} {path}: millgate refuses it: {refused}")
            kind = None
        if kind is None:
            by_id[resource.Id] = None
            continue
        name = _safe_name(resource.Name, taken)
        entry: dict[str, Any] = {"name": name, "kind": kind, "path": path}
        if group_owner:
            entry["group_owner"] = True
        if source is not None:
            entry["source"] = source
        if destination is not None:
            entry["destination"] = destination
        plan.resources.append(entry)
        by_id[resource.Id] = name
    return by_id


def _model_source(s3_uri: str | None) -> str | None:
    """A v1 model's S3Uri as millgate's model `source` (s3://bucket/key), None when it is not one."""
    if s3_uri is None or not s3_uri.startswith("s3://"):
        return None
    bucket, _, key = s3_uri[len("s3://") :].partition("/")
    return s3_uri if bucket and key.strip("/") else None


def _find_code(code_dir: Path, arn: FunctionArn) -> Path | None:
    for candidate in (arn.name, str(arn), arn.unqualified):
        for path in (code_dir / f"{candidate}.zip", code_dir / candidate):
            if path.exists():
                return path
    return None


def _has_module(code: Path, handler: str) -> bool:
    module = handler.rpartition(".")[0].replace(".", "/")
    wanted = {f"{module}.py", f"{module}/__init__.py"}
    if code.is_dir():
        return any((code / w).is_file() for w in wanted)
    try:
        with zipfile.ZipFile(code) as archive:
            return bool(wanted & set(archive.namelist()))
    except zipfile.BadZipFile:
        raise ImportFailed(f"{code}: not a zip file") from None


def _map_functions(
    export: Export,
    plan: Plan,
    resources: dict[str, str | None],
    code_dir: Path,
    options: ImportOptions,
    log_cap: int | None,
) -> dict[str, str | None]:
    """v1 function ARN (qualified and unqualified) -> millgate function name (None: not imported)."""
    definition: FunctionDefinition | None = export.definitions.get("function")
    by_arn: dict[str, str | None] = {}
    taken: set[str] = set()
    default_execution = definition.DefaultConfig.Execution if definition and definition.DefaultConfig else None
    for index, v1 in enumerate(definition.Functions if definition else []):
        where = f"{export.file('function')}: Definition.Functions[{index}]"
        if not v1.FunctionArn:
            raise ImportFailed(f"{where}.FunctionArn: missing")
        system = system_function_name(v1.FunctionArn)
        if system is not None:
            reason = {
                "GGIPDetector": "millgate's discovery detects the gateway's addresses itself ([discovery] addresses)",
                "GGStreamManager": "stream manager is not supported",
            }.get(system, "a Greengrass core function millgate does not provide")
            plan.note(f"{where} ({system})", reason)
            by_arn[v1.FunctionArn] = None
            continue
        try:
            arn = parse_function_arn(v1.FunctionArn)
        except ArnError as exc:
            raise ImportFailed(f"{where}.FunctionArn: {exc}") from None
        where = f"{where} ({arn.name})"
        config = v1.FunctionConfiguration or V1FunctionConfiguration()
        handler = config.Executable or ""
        name = _safe_name(arn.name, taken)
        by_arn[str(arn)] = by_arn[arn.unqualified] = None
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", handler):
            plan.note(where, f"Executable {handler!r} is not a Python handler (module.function): not imported")
            continue
        code = _find_code(code_dir, arn)
        if code is None:
            raise ImportFailed(
                f"{where}: no deployment package in {code_dir} "
                f"(looked for {arn.name}.zip, {arn}.zip, {arn.unqualified}.zip)"
            )
        if not _has_module(code, handler):
            plan.note(where, f"{code.name} holds no {handler.rpartition('.')[0]} Python module: not imported")
            continue
        environment = config.Environment or FunctionEnvironment()
        execution = environment.Execution or default_execution
        run_as = _run_as(plan, where, execution, options)
        isolation = _isolation(environment.Execution, default_execution)
        if isolation == "GreengrassContainer":
            plan.note(where, "GreengrassContainer: runs without a container, isolated by its own uid/gid")
        memory_mb = _memory_mb(plan, where, config, isolation)
        if environment.AccessSysfs:
            plan.note(where, "AccessSysfs: /sys is readable without a grant")
        if config.ExecArgs:
            plan.note(where, f"ExecArgs {config.ExecArgs!r} are not used")
        if config.FunctionRuntimeOverride:
            plan.note(
                where, f"FunctionRuntimeOverride {config.FunctionRuntimeOverride!r}: runs on the gateway's Python"
            )
        entry: dict[str, Any] = {
            "name": name,
            "code": f"functions/{name}{'.zip' if code.is_file() else ''}",
            "handler": handler,
            "runtime": "greengrass-v1",
            "arn": str(arn),
            "encoding": (config.EncodingType or "json").lower(),
            "lifecycle": "long-lived" if config.Pinned else "on-demand",
            "run_as": run_as,
            "timeout_s": min(max(config.Timeout or 3, 1), 900),
            "memory_mb": memory_mb,
        }
        if entry["encoding"] not in ("json", "binary"):
            raise ImportFailed(f"{where}: EncodingType {config.EncodingType!r} is neither json nor binary")
        if not config.Pinned:
            entry["max_concurrency"] = ON_DEMAND_CONCURRENCY
        if options.daemon_port != DEFAULT_DAEMON_PORT:
            entry["daemon_port"] = options.daemon_port
        if log_cap:
            entry["log_max_bytes"] = log_cap
        variables = {}
        for key, value in environment.Variables.items():
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                variables[key] = value
            else:
                plan.note(where, f"environment variable {key!r} is not a valid name: dropped")
        if variables:
            entry["environment"] = variables
        grants = []
        for p_index, policy in enumerate(environment.ResourceAccessPolicies):
            if policy.ResourceId not in resources:
                raise ImportFailed(
                    f"{where}.FunctionConfiguration.Environment.ResourceAccessPolicies[{p_index}].ResourceId: "
                    f"no resource {policy.ResourceId!r} in {export.file('resource').name}"
                )
            resource = resources[policy.ResourceId]
            if resource is not None:
                grants.append({"name": resource, "access": "rw" if policy.Permission == "rw" else "ro"})
        if grants:
            entry["resources"] = grants
        plan.functions.append(entry)
        plan.code[name] = code
        by_arn[str(arn)] = by_arn[arn.unqualified] = name
    return by_arn


def _isolation(function: V1Execution | None, default: V1Execution | None) -> str:
    """The function's IsolationMode: its own, else the group's default, else v1's (a container)."""
    for execution in (function, default):
        if execution is not None and execution.IsolationMode:
            return execution.IsolationMode
    return "GreengrassContainer"


def _memory_mb(plan: Plan, where: str, config: V1FunctionConfiguration, isolation: str) -> int:
    """memory_mb for MemorySize (KB). Without a container v1 capped no memory: MemorySize "is not
    applicable and should be cleared when you run the Lambda function without containerization" (AWS
    IoT Greengrass v1 API reference, FunctionConfiguration), so such a function gets the largest cap."""
    if isolation == "NoContainer":
        given = f"its MemorySize of {config.MemorySize} KB is not used: " if config.MemorySize else ""
        plan.note(
            where,
            f"NoContainer: v1 did not cap its memory; {given}memory_mb = {UNCAPPED_MEMORY_MB} "
            "(the largest), lower it to cap the function",
        )
        return UNCAPPED_MEMORY_MB
    return min(max(math.ceil((config.MemorySize or CONTAINER_MEMORY_KB) / 1024), 16), UNCAPPED_MEMORY_MB)


def _run_as(plan: Plan, where: str, execution: V1Execution | None, options: ImportOptions) -> str:
    run_as = execution.RunAs if execution else None
    if run_as is not None and run_as.Uid is not None and run_as.Gid is not None:
        if run_as.Uid != 0 and run_as.Gid != 0:
            return f"{run_as.Uid}:{run_as.Gid}"
        plan.note(where, f"RunAs {run_as.Uid}:{run_as.Gid}: millgate never runs functions as root")
    fallback = _default_run_as(options.run_as)
    if fallback is None:
        raise ImportFailed(
            f"{where}: no RunAs uid/gid and no ggc_user/ggc_group on this machine: give --run-as UID:GID"
        )
    return fallback


def _endpoint(text: str, plan: Plan, functions: dict[str, str | None], where: str) -> str | None:
    """A v1 subscription endpoint in millgate's words; None (with a note) when it has none."""
    if text == "cloud":
        return "cloud"
    if text == "GGShadowService":
        return "shadow"
    if text.startswith("arn:") and ":lambda:" in text:
        if system_function_name(text) is not None:
            plan.note(where, f"{text}: a Greengrass core function millgate does not provide")
            return None
        try:
            arn = parse_function_arn(text)
        except ArnError as exc:
            raise ImportFailed(f"{where}: {exc}") from None
        if str(arn) in functions or arn.unqualified in functions:
            name = functions.get(str(arn)) or functions.get(arn.unqualified)
            if name is None:
                plan.note(where, f"{arn.name} was not imported")
            return f"function:{name}" if name else None
        plan.note(where, f"{text} is not a function of this group")
        return None
    if text.startswith("arn:") and ":iot:" in text:
        try:
            thing = parse_thing_arn(text)
        except ArnError as exc:
            raise ImportFailed(f"{where}: {exc}") from None
        if thing == plan.thing_name:
            plan.note(where, "the core thing itself is not a subscription endpoint in millgate")
            return None
        return f"device:{thing}"
    if text.startswith("arn:") and ":greengrass:" in text and "/connectors/" in text:
        plan.note(where, f"connector {text} is not supported")
        return None
    raise ImportFailed(f"{where}: {text!r} is not 'cloud', 'GGShadowService', a function ARN or a thing ARN")


def _map_subscriptions(export: Export, plan: Plan, functions: dict[str, str | None]) -> None:
    definition: SubscriptionDefinition | None = export.definitions.get("subscription")
    seen: set[tuple[str, str, str]] = set()
    for index, sub in enumerate(definition.Subscriptions if definition else []):
        where = f"{export.file('subscription')}: Definition.Subscriptions[{index}] ({sub.Id})"
        source = _endpoint(sub.Source, plan, functions, f"{where}.Source")
        target = _endpoint(sub.Target, plan, functions, f"{where}.Target")
        if source is None or target is None:
            continue
        try:
            validate_topic_filter(sub.Subject)
        except TopicError as exc:
            plan.note(where, f"Subject {exc}: not imported")
            continue
        if source == target or (source, target, sub.Subject) in seen:
            continue
        seen.add((source, target, sub.Subject))
        plan.subscriptions.append({"source": source, "target": target, "topic": sub.Subject})
    connectors: ConnectorDefinition | None = export.definitions.get("connector")
    for index, connector in enumerate(connectors.Connectors if connectors else []):
        plan.note(
            f"{export.file('connector')}: Definition.Connectors[{index}]",
            f"connector {connector.ConnectorArn} is not supported",
        )


@dataclass(frozen=True)
class ImportOptions:
    run_as: str | None = None
    daemon_port: int = DEFAULT_DAEMON_PORT


def plan_import(export: Export, code_dir: Path, options: ImportOptions) -> Plan:
    plan = Plan()
    _map_core(export, plan)
    _map_devices(export, plan)
    log_cap = _map_loggers(export, plan)
    resources = _map_resources(export, plan)
    functions = _map_functions(export, plan, resources, code_dir, options, log_cap)
    _map_subscriptions(export, plan, functions)
    if not re.fullmatch(THING_NAME_PATTERN, plan.thing_name):
        raise ImportFailed(f"{export.file('core')}: the core thing name {plan.thing_name!r} is not valid")
    for index, device in enumerate(plan.devices):
        if device in RESERVED_IDENTITIES:
            raise ImportFailed(f"{export.file('device')}: Definition.Devices[{index}]: {device!r} is reserved")
    return plan


def import_group(
    export_dir: Path, out: Path, code_dir: Path | None = None, options: ImportOptions | None = None
) -> Plan:
    export = read_export(export_dir)
    code = code_dir if code_dir is not None else export_dir
    if not code.is_dir():
        raise ImportFailed(f"{code}: not a directory (expected the functions' deployment zips)")
    plan = plan_import(export, code, options or ImportOptions())
    write_config(plan, export, out)
    return plan
