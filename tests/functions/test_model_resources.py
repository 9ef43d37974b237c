"""Model resources: a model (file, directory, zip, tar.gz, or an S3 object fetched by a child process
from moto's server) unpacked read-only for the one function granted it, found through its environment;
and the example ONNX anomaly detector end to end on a real gateway, its model built here from
synthetic data.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import stat
import tarfile
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import boto3
import paho.mqtt.client as paho
import pytest
from moto.server import ThreadedMotoServer

from gateway.config import Function, Resource, ResourceGrant
from gateway.model_resources import deploy_models, env_name, model_environment, resources_home
from tests.fixtures.gateway import RunningGateway, free_port, start_gateway, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "examples" / "bulk-anomaly"
OWNER = (1001, 1001)


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bulk_anomaly_build_model", EXAMPLE / "build_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def function_with(*grants: str) -> Function:
    return Function(
        name="scorer",
        code="functions/scorer",
        handler="scorer.function_handler",
        run_as="1001:1001",
        resources=[ResourceGrant(name=g) for g in grants],
    )


def owner() -> tuple[int, int] | None:
    return OWNER if os.geteuid() == 0 else None


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    (root / "models" / "dir").mkdir(parents=True)
    (root / "models" / "dir" / "weights.bin").write_bytes(b"\x00\x01")
    (root / "models" / "single.onnx").write_bytes(b"onnx-bytes")
    with zipfile.ZipFile(root / "models" / "bundle.zip", "w") as archive:
        archive.writestr("net/model.onnx", b"zipped")
    with tarfile.open(root / "models" / "bundle.tar.gz", "w:gz") as archive:
        data = b"tarred"
        info = tarfile.TarInfo("net/model.onnx")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return root


def test_every_source_kind_is_unpacked_read_only_and_named_in_the_environment(sources: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    resources = {
        "from-dir": Resource(name="from-dir", kind="model", source="models/dir", path="/ml/dir"),
        "single": Resource(name="single", kind="model", source="models/single.onnx", path="/ml/single"),
        "zipped": Resource(name="zipped", kind="model", source="models/bundle.zip", path="/ml/zip"),
        "tarred": Resource(
            name="tarred", kind="model", source=str(sources / "models" / "bundle.tar.gz"), path="/opt/tar"
        ),
        "null": Resource(name="null", kind="device", path="/dev/null"),
    }
    function = function_with(*resources)
    assert deploy_models(function, resources, state, sources, owner()) == []

    env = model_environment(state, function)
    home = resources_home(state, function.name)
    assert env[env_name("from-dir")] == str(home / "from-dir")
    assert env["MILLGATE_RESOURCE_FROM_DIR"] == str(home / "from-dir")
    assert (Path(env["MILLGATE_RESOURCE_FROM_DIR"]) / "weights.bin").read_bytes() == b"\x00\x01"
    assert (Path(env["MILLGATE_RESOURCE_SINGLE"]) / "single.onnx").read_bytes() == b"onnx-bytes"
    assert (Path(env["MILLGATE_RESOURCE_ZIPPED"]) / "net" / "model.onnx").read_bytes() == b"zipped"
    assert (Path(env["MILLGATE_RESOURCE_TARRED"]) / "net" / "model.onnx").read_bytes() == b"tarred"
    assert "MILLGATE_RESOURCE_NULL" not in env  # devices are used at their host path
    prefix = env["AWS_GG_RESOURCE_PREFIX"]
    assert (Path(prefix + "/ml/zip") / "net" / "model.onnx").read_bytes() == b"zipped"
    assert (Path(prefix + "/opt/tar") / "net" / "model.onnx").read_bytes() == b"tarred"
    assert os.path.realpath(prefix + "/dev/null") == "/dev/null"  # prefix + path finds every resource

    model_file = Path(env["MILLGATE_RESOURCE_ZIPPED"]) / "net" / "model.onnx"
    assert stat.S_IMODE(model_file.stat().st_mode) == 0o440
    assert stat.S_IMODE(model_file.parent.stat().st_mode) == 0o550
    if os.geteuid() == 0:
        assert (model_file.stat().st_uid, model_file.stat().st_gid) == OWNER
        # the versions are the function's; the directories holding them root's, passable, not listable,
        # so the function cannot leave a link there for the next deployment (as root) to follow
        for directory in (home, home / ".versions", home / "gg"):
            assert (directory.stat().st_uid, stat.S_IMODE(directory.stat().st_mode)) == (0, 0o711), directory


def test_a_changed_model_is_a_new_version_and_the_old_one_is_pruned(sources: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    resources = {"m": Resource(name="m", kind="model", source="models/single.onnx", path="/ml/m")}
    function = function_with("m")
    link = resources_home(state, "scorer") / "m"
    versions = []
    for content in (b"v1", b"v2", b"v3"):
        model = sources / "models" / "single.onnx"
        model.write_bytes(content)
        assert deploy_models(function, resources, state, sources, owner()) == []
        assert (link / "single.onnx").read_bytes() == content
        versions.append(os.readlink(link))
    assert len(set(versions)) == 3
    kept = sorted(p.name for p in (link.parent / ".versions").iterdir() if not p.name.startswith("."))
    assert kept == sorted(Path(v).name for v in versions[1:])  # the current one and one to roll back to

    assert deploy_models(function_with(), resources, state, sources, owner()) == []
    assert not resources_home(state, "scorer").exists()  # no model granted any more: nothing left behind


def test_model_problems_are_reported_for_that_function(sources: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    resources = {
        "gone": Resource(name="gone", kind="model", source="models/nope.onnx", path="/ml/gone"),
        "ok": Resource(name="ok", kind="model", source="models/single.onnx", path="/ml/ok"),
    }
    function = function_with("gone", "ok").model_copy(
        update={"resources": [ResourceGrant(name="gone"), ResourceGrant(name="ok", access="rw")]}
    )
    problems = deploy_models(function, resources, state, sources, owner())
    assert any("'gone'" in p and "does not exist" in p for p in problems), problems
    assert any("'ok'" in p and "read-only" in p for p in problems), problems


def test_a_model_without_source_is_used_where_it_lies(sources: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    resources = {"here": Resource(name="here", kind="model", path=str(sources / "models" / "dir"))}
    function = function_with("here")
    assert deploy_models(function, resources, state, sources, owner()) == []
    env = model_environment(state, function)
    assert (Path(env["MILLGATE_RESOURCE_HERE"]) / "weights.bin").read_bytes() == b"\x00\x01"
    assert (Path(env["AWS_GG_RESOURCE_PREFIX"] + str(sources / "models" / "dir")) / "weights.bin").exists()


def test_model_resource_source_is_only_for_models_and_s3_needs_a_key() -> None:
    with pytest.raises(ValueError, match='only for kind = "model"'):
        Resource(name="d", kind="device", path="/dev/null", source="models/x.onnx")
    with pytest.raises(ValueError, match="not s3://bucket/key"):
        Resource(name="m", kind="model", path="/ml/m", source="s3://bucket-only")


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_model_is_fetched_once_kept_offline_and_refetched_when_it_changes(s3: str, tmp_path: Path) -> None:
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    client.create_bucket(Bucket="models")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"v1"))
    client.put_object(Bucket="models", Key="press/anomaly.tar.gz", Body=archive.getvalue())
    state = tmp_path / "state"
    state.mkdir()
    resource = Resource(
        name="m", kind="model", source="s3://models/press/anomaly.tar.gz", path="/ml/m", endpoint_url=s3
    )
    function = function_with("m")
    link = resources_home(state, "scorer") / "m"

    assert deploy_models(function, {"m": resource}, state, tmp_path, owner()) == []
    first = os.readlink(link)
    assert (link / "model.onnx").read_bytes() == b"v1"

    assert deploy_models(function, {"m": resource}, state, tmp_path, owner()) == []
    assert os.readlink(link) == first  # unchanged object: the same version

    offline = resource.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}", "fetch_timeout_s": 20})
    assert deploy_models(function, {"m": offline}, state, tmp_path, owner()) == []
    assert os.readlink(link) == first  # S3 unreachable: the deployed model stays

    client.put_object(Bucket="models", Key="press/anomaly.tar.gz", Body=b"plain now")
    plain = resource.model_copy(update={"source": "s3://models/press/anomaly.tar.gz"})
    problems = deploy_models(function, {"m": plain}, state, tmp_path, owner())
    assert problems and "cannot unpack" in problems[0]  # not a tar.gz any more: a clear problem

    client.put_object(Bucket="models", Key="press/model.onnx", Body=b"v2")
    moved = resource.model_copy(update={"source": "s3://models/press/model.onnx"})
    assert deploy_models(function, {"m": moved}, state, tmp_path, owner()) == []
    assert (link / "model.onnx").read_bytes() == b"v2"

    missing = resource.model_copy(update={"source": "s3://models/press/none.onnx"})
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    problems = deploy_models(function, {"m": missing}, fresh, tmp_path, owner())
    assert problems and "cannot fetch" in problems[0]


DETECTOR_GATEWAY = """
[gateway]
thing_name = "model-test"
status_interval_s = 0.5

[[resources]]
name = "anomaly-model"
kind = "model"
source = "{model}"
path = "/ml/anomaly"

[[functions]]
name = "detector"
code = "{code}"
handler = "detector.function_handler"
run_as = "1001:1001"
timeout_s = 20
memory_mb = 512
resources = [{{ name = "anomaly-model" }}]

[[subscriptions]]
source = "device:press-01"
target = "function:detector"
topic = "plant/press-01/sensors"

[[subscriptions]]
source = "function:detector"
target = "cloud"
topic = "alerts/#"
"""


@pytest.fixture(scope="module")
def detector_gateway() -> Iterator[RunningGateway]:
    if os.geteuid() != 0:
        pytest.skip("running functions under other uids needs root")
    base = Path("/tmp") / f"mgml{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    load_builder().build(base / "models" / "anomaly.onnx", samples=5000)
    config = base / "etc"
    config.mkdir()
    code = EXAMPLE / "functions" / "detector"
    (config / "gateway.toml").write_text(DETECTOR_GATEWAY.format(model=base / "models" / "anomaly.onnx", code=code))
    running = start_gateway(config, base / "s")
    yield running
    running.stop()
    running.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)


def test_onnx_detector_alerts_on_anomalous_readings_only(detector_gateway: RunningGateway) -> None:
    builder = load_builder()
    normal = builder.normal_readings(20, seed=99)
    anomalous = [
        [85.0, 5.2, 0.35, 4.0],  # hot but drawing idle current: the correlation is broken
        [70.0, 6.5, 0.35, 5.5],  # pressure far out of its range
        [70.0, 6.5, 1.5, 4.0],  # vibration far beyond any load
    ]
    channels = builder.CHANNELS
    alerts: list[dict] = []
    arrived = threading.Event()
    client = detector_gateway.client("operator")

    def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
        alerts.append(json.loads(message.payload))
        arrived.set()

    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe("alerts/#", qos=1)
    assert subscribed.wait(5)
    for seq, row in enumerate(normal.tolist()):
        reading = {**dict(zip(channels, row, strict=True)), "ts": seq}
        client.publish("plant/press-01/sensors", json.dumps(reading), qos=1).wait_for_publish(5)
    for seq, row in enumerate(anomalous, start=1000):
        reading = {**dict(zip(channels, row, strict=True)), "ts": seq}
        client.publish("plant/press-01/sensors", json.dumps(reading), qos=1).wait_for_publish(5)
    wait_until(lambda: len(alerts) >= len(anomalous), 40, "three alerts")
    done = {"ts": -1, **dict(zip(channels, normal[0].tolist(), strict=True))}
    client.publish("plant/press-01/sensors", json.dumps(done), qos=1).wait_for_publish(5)
    wait_until(
        lambda: detector_gateway.status()["components"]["fn-detector"].get("invocations", 0) >= 24,
        20,
        "every reading scored",
    )
    assert sorted(a["ts"] for a in alerts) == [1000, 1001, 1002], alerts
    assert all(a["device"] == "press-01" and a["score"] > a["threshold"] for a in alerts)
