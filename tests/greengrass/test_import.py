"""`millgate import greengrass-v1`: a v1 group export (AWS CLI JSON) becomes a config dir that validates,
with every unmapped item listed; bad exports are refused with the file and item named, nothing written.
"""

from __future__ import annotations

import argparse
import json
import tomllib
import zipfile
from pathlib import Path

import pytest

from gateway.config_loader import load_config
from gateway.greengrass_config_writer import NOTES_FILE
from gateway.greengrass_import import ImportFailed, ImportOptions, import_group
from gateway.greengrass_import_cli import add_import_parser
from tests.greengrass.v1_group import GROUP_ID, GROUP_NAME, V1Function, function_arn, thing_arn, write_export

HANDLER = "def function_handler(event, context):\n    return event\n"


def _zip(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / f"{name}.zip", "w") as archive:
        archive.writestr(f"{name}.py", HANDLER)


def _export(tmp_path: Path, **overrides: object) -> tuple[Path, Path]:
    functions = [
        V1Function("Collector", HANDLER, pinned=True, resources=[("serial", "rw"), ("secret", "ro")]),
        V1Function("Root", HANDLER, run_as=(0, 0)),
        V1Function("Reporter", HANDLER, encoding="binary", variables={"SITE": "a", "bad-name": "x"}),
    ]
    for function in functions:
        _zip(tmp_path / "zips", function.name)
    resources = [
        {
            "Id": "serial",
            "Name": "Serial Port 1",
            "ResourceDataContainer": {
                "LocalDeviceResourceData": {"SourcePath": "/dev/null", "GroupOwnerSetting": {"AutoAddGroupOwner": True}}
            },
        },
        {
            "Id": "logs",
            "Name": "var-log",
            "ResourceDataContainer": {
                "LocalVolumeResourceData": {"SourcePath": "/var/log", "DestinationPath": "/logs"}
            },
        },
        {
            "Id": "model",
            "Name": "model",
            "ResourceDataContainer": {
                "S3MachineLearningModelResourceData": {"DestinationPath": "/opt/models/press", "S3Uri": "s3://b/m.zip"}
            },
        },
        {"Id": "secret", "Name": "secret", "ResourceDataContainer": {"SecretsManagerSecretResourceData": {}}},
    ]
    subscriptions = [
        (thing_arn("press-01"), "line1/+/temperature", function_arn("Collector")),
        (function_arn("Collector"), "line1/alerts", "cloud"),
        (function_arn("Reporter"), "$aws/things/press-01/shadow/update", "GGShadowService"),
        ("GGShadowService", "$aws/things/press-01/shadow/update/delta", function_arn("Reporter")),
        (function_arn("Missing"), "x/y", "cloud"),
        ("arn:aws:greengrass:us-west-2:123456789012:/connectors/ModbusRTUProtocolAdapter/versions/3", "m/+", "cloud"),
    ]
    write_export(
        tmp_path / "export",
        "core-thing",
        functions,
        subscriptions,
        ["press-01"],
        resources,
        [{"Id": "sm", "FunctionArn": "arn:aws:lambda:::function:GGStreamManager:1"}],
    )
    for filename, change in overrides.items():
        path = tmp_path / "export" / f"{filename.replace('_', '-')}.json"
        if change is None:
            path.unlink()
        else:
            document = json.loads(path.read_text())
            change(document)  # type: ignore[operator]
            path.write_text(json.dumps(document))
    return tmp_path / "export", tmp_path / "zips"


def test_import_writes_a_valid_config_and_lists_what_did_not_map(tmp_path: Path) -> None:
    export, zips = _export(tmp_path)
    plan = import_group(export, tmp_path / "etc", zips, ImportOptions(run_as="1200:1200"))
    loaded = load_config(tmp_path / "etc")
    config = loaded.gateway
    assert config.gateway.thing_name == "core-thing"
    # group.json's Id and Name: devices discover the group by id, v1 functions read the name
    assert (config.discovery.group_id, config.discovery.group_name) == (GROUP_ID, GROUP_NAME)
    functions = {f.name: f for f in config.functions}
    assert set(functions) == {"Collector", "Root", "Reporter"}
    collector = functions["Collector"]
    assert (collector.lifecycle, collector.runtime, collector.run_as) == ("long-lived", "greengrass-v1", "1101:1101")
    assert collector.arn == function_arn("Collector")
    assert [(g.name, g.access) for g in collector.resources] == [("Serial-Port-1", "rw")]
    assert (tmp_path / "etc" / collector.code).is_file()
    assert functions["Root"].run_as == "1200:1200"  # v1 allowed root; millgate does not
    reporter = functions["Reporter"]
    assert (reporter.encoding, reporter.environment, reporter.memory_mb) == ("binary", {"SITE": "a"}, 64)
    resources = {r.name: r for r in config.resources}
    assert resources["Serial-Port-1"].group_owner and resources["Serial-Port-1"].kind == "device"
    assert (resources["model"].kind, resources["model"].path) == ("model", "/opt/models/press")
    assert resources["model"].source == "s3://b/m.zip"
    assert "var-log" not in resources  # volumes under /var are refused by millgate
    routes = {(s.source, s.target, s.topic) for s in config.subscriptions}
    assert routes == {
        ("device:press-01", "function:Collector", "line1/+/temperature"),
        ("function:Collector", "cloud", "line1/alerts"),
        ("function:Reporter", "shadow", "$aws/things/press-01/shadow/update"),
        ("shadow", "function:Reporter", "$aws/things/press-01/shadow/update/delta"),
    }
    assert {(s.thing, s.sync) for s in config.shadows} == {("core-thing", "both")}
    notes = (tmp_path / "etc" / NOTES_FILE).read_text()
    assert "millgate device add press-01" in notes
    for expected in (
        "GGStreamManager",
        "secret resources are not supported",
        "/var/log",
        "never runs functions as root",
        "bad-name",
        "Missing",
        "ModbusRTUProtocolAdapter",
        "AWSCloudWatch",
    ):
        assert expected in notes, expected
    assert len(plan.notes) == notes.count("\n- ")


def _add_models(document: dict) -> None:
    document["Definition"]["Resources"] += [
        {
            "Id": "trained",
            "Name": "defect-detector",
            "ResourceDataContainer": {
                "SageMakerMachineLearningModelResourceData": {
                    "DestinationPath": "/ml/defects",
                    "SageMakerJobArn": "arn:aws:sagemaker:us-west-2:123456789012:training-job/defects-7",
                    "OwnerSetting": {"GroupOwner": "ggc_group", "GroupPermission": "ro"},
                }
            },
        },
        {
            "Id": "no-key",
            "Name": "bucket-only",
            "ResourceDataContainer": {
                "S3MachineLearningModelResourceData": {"DestinationPath": "/ml/whole", "S3Uri": "s3://models-only"}
            },
        },
    ]


def _grant_models(document: dict) -> None:
    policies = document["Definition"]["Functions"][2]["FunctionConfiguration"]["Environment"]["ResourceAccessPolicies"]
    policies += [{"ResourceId": "model", "Permission": "ro"}, {"ResourceId": "trained", "Permission": "ro"}]


def test_import_maps_s3_and_sagemaker_models_to_model_resources(tmp_path: Path) -> None:
    export, zips = _export(tmp_path, resource_definition_version=_add_models, function_definition_version=_grant_models)
    import_group(export, tmp_path / "etc", zips, ImportOptions(run_as="1200:1200"))
    written = tomllib.loads((tmp_path / "etc" / "gateway.toml").read_text())
    models = {r["name"]: r for r in written["resources"] if r["kind"] == "model"}
    assert models["model"] == {"name": "model", "kind": "model", "path": "/opt/models/press", "source": "s3://b/m.zip"}
    # a SageMaker job's artefact or a bucket without a key: the model is kept, its source is for the operator
    assert models["defect-detector"] == {"name": "defect-detector", "kind": "model", "path": "/ml/defects"}
    assert models["bucket-only"] == {"name": "bucket-only", "kind": "model", "path": "/ml/whole"}
    config = load_config(tmp_path / "etc").gateway
    resources = {r.name: r for r in config.resources}
    assert (resources["model"].source, resources["model"].path) == ("s3://b/m.zip", "/opt/models/press")
    reporter = next(f for f in config.functions if f.name == "Reporter")
    assert [(g.name, g.access) for g in reporter.resources] == [("model", "ro"), ("defect-detector", "ro")]
    notes = (tmp_path / "etc" / NOTES_FILE).read_text()
    assert "training-job/defects-7" in notes and "ModelArtifacts.S3ModelArtifacts" in notes
    assert "'s3://models-only' is not s3://bucket/key" in notes


def _add_volumes(document: dict) -> None:
    document["Definition"]["Resources"] += [
        {
            "Id": "recipes",
            "Name": "recipes",
            "ResourceDataContainer": {
                "LocalVolumeResourceData": {"SourcePath": "/srv/recipes", "DestinationPath": "/recipes"}
            },
        },
        {
            "Id": "sneaky",
            "Name": "sneaky",
            "ResourceDataContainer": {
                "LocalVolumeResourceData": {"SourcePath": "/srv/other", "DestinationPath": "/proc/other"}
            },
        },
    ]


def test_import_mounts_a_volume_at_its_v1_destination_path_and_notes_a_refused_one(tmp_path: Path) -> None:
    # v1 containers mounted a volume at DestinationPath; millgate does so in the function's mount namespace
    export, zips = _export(tmp_path, resource_definition_version=_add_volumes)
    import_group(export, tmp_path / "etc", zips, ImportOptions(run_as="1200:1200"))
    written = tomllib.loads((tmp_path / "etc" / "gateway.toml").read_text())
    volumes = {r["name"]: r for r in written["resources"] if r["kind"] == "volume"}
    recipes = {"name": "recipes", "kind": "volume", "path": "/srv/recipes", "destination": "/recipes"}
    assert volumes["recipes"] == recipes
    assert volumes["sneaky"] == {"name": "sneaky", "kind": "volume", "path": "/srv/other"}
    resources = {r.name: r for r in load_config(tmp_path / "etc").gateway.resources}
    assert resources["recipes"].destination == "/recipes"
    notes = (tmp_path / "etc" / NOTES_FILE).read_text()
    assert "the function saw it at /proc/other, which millgate refuses as a destination" in notes


def _memory_sizes(document: dict) -> None:
    # Functions[1], Root, stays NoContainer with a MemorySize of 65536 KB (v1_group.py: it sets RunAs)
    collector, _, reporter = document["Definition"]["Functions"][:3]
    del collector["FunctionConfiguration"]["MemorySize"]  # in the group's default container
    reporter["FunctionConfiguration"]["Environment"]["Execution"] = {"IsolationMode": "NoContainer"}
    del reporter["FunctionConfiguration"]["MemorySize"]


def test_import_leaves_a_function_v1_ran_without_a_container_uncapped(tmp_path: Path) -> None:
    """MemorySize "is not applicable and should be cleared when you run the Lambda function without
    containerization" (AWS IoT Greengrass v1 API reference, FunctionConfiguration): v1 capped no memory
    there, so the largest memory_mb, never the 16 MB default (which the v1 runtime alone nearly fills)."""
    export, zips = _export(tmp_path, function_definition_version=_memory_sizes)
    import_group(export, tmp_path / "etc", zips, ImportOptions(run_as="1200:1200"))
    functions = {f.name: f for f in load_config(tmp_path / "etc").gateway.functions}
    assert functions["Collector"].memory_mb == 16  # a container without MemorySize: 16384 KB, as before
    assert functions["Reporter"].memory_mb == 65536
    assert functions["Root"].memory_mb == 65536
    notes = (tmp_path / "etc" / NOTES_FILE).read_text()
    assert "(Reporter): NoContainer: v1 did not cap its memory; memory_mb = 65536 (the largest)" in notes
    assert "(Root): NoContainer: v1 did not cap its memory; its MemorySize of 65536 KB is not used" in notes
    assert "(Collector): NoContainer" not in notes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resource_definition_version": None}, "resource-definition-version.json: missing"),
        (
            {
                "function_definition_version": lambda d: d["Definition"]["Functions"][0][
                    "FunctionConfiguration"
                ].update({"Colour": "blue"})
            },
            "function-definition-version.json: Definition.Functions[0].FunctionConfiguration.Colour: unknown field",
        ),
        (
            {
                "subscription_definition_version": lambda d: d["Definition"]["Subscriptions"][0].update(
                    {"Target": "arn:aws:lambda:nowhere:function:Collector"}
                )
            },
            "subscription-definition-version.json: Definition.Subscriptions[0] (sub-0).Target: "
            "'arn:aws:lambda:nowhere:function:Collector' is not a Lambda function ARN",
        ),
        (
            {"device_definition_version": lambda d: d["Definition"]["Devices"][0].update({"ThingArn": "press-01"})},
            "device-definition-version.json: Definition.Devices[0].ThingArn: 'press-01' is not an AWS IoT thing ARN",
        ),
    ],
)
def test_bad_export_names_file_and_item_and_writes_nothing(tmp_path: Path, change: dict, message: str) -> None:
    export, zips = _export(tmp_path, **change)
    with pytest.raises(ImportFailed) as failed:
        import_group(export, tmp_path / "etc", zips, ImportOptions(run_as="1200:1200"))
    assert message in str(failed.value)
    assert not (tmp_path / "etc").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "zips"]


def test_missing_function_zip_is_named(tmp_path: Path) -> None:
    export, zips = _export(tmp_path)
    (zips / "Reporter.zip").unlink()
    with pytest.raises(ImportFailed, match=r"Functions\[2\] \(Reporter\): no deployment package .*Reporter\.zip"):
        import_group(export, tmp_path / "etc", zips, ImportOptions(run_as="1200:1200"))
    assert not (tmp_path / "etc").exists()


def test_existing_config_dir_is_not_overwritten(tmp_path: Path) -> None:
    export, zips = _export(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "gateway.toml").write_text("# mine\n")
    with pytest.raises(ImportFailed, match="already exists and is not empty"):
        import_group(export, tmp_path / "etc", zips, ImportOptions(run_as="1200:1200"))
    assert (tmp_path / "etc" / "gateway.toml").read_text() == "# mine\n"


def test_command_line_imports_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export, zips = _export(tmp_path)
    parser = argparse.ArgumentParser(prog="millgate")
    add_import_parser(parser.add_subparsers(dest="verb", required=True), argparse.ArgumentParser(add_help=False))
    argv = [
        "import",
        "greengrass-v1",
        str(export),
        "--out",
        str(tmp_path / "etc"),
        "--code",
        str(zips),
        "--run-as",
        "1200:1200",
        "--daemon-port",
        "8123",
    ]
    args = parser.parse_args(argv)
    assert args.handler(args) == 0
    assert "3 functions" in capsys.readouterr().out
    written = tomllib.loads((tmp_path / "etc" / "gateway.toml").read_text())
    assert {f["daemon_port"] for f in written["functions"]} == {8123}
    # without --code the zips are looked for in EXPORT_DIR, where there are none
    args = parser.parse_args([*argv[:3], "--out", str(tmp_path / "etc2"), "--run-as", "1200:1200"])
    assert args.handler(args) == 1
    assert "no deployment package" in capsys.readouterr().err
