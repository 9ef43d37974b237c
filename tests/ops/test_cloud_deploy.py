"""Cloud-driven deployments and core OTA against a real gateway and moto's S3 server on 127.0.0.1:
the desired state is set in the gateway's own shadow with `millgate shadow update` (or, end to end, by
the fleet on a TLS mosquitto playing AWS IoT, synced down by the uplink), the core fetches, verifies and
deploys (or installs) and reports the outcome in the reported state.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from gateway.config import DeploymentSection
from gateway.deploy_bundle import unpack_bundle
from gateway.deploy_job import JobRefused, Request, sha256_file
from gateway.function_deploy import read_manifest
from gateway.ota import keep_installed, kept_package, run_package_job
from gateway.package_version import running_version
from tests.fixtures.aws_shadows import AwsCloudBroker, CloudShadows
from tests.fixtures.debs import make_deb
from tests.fixtures.gateway import RunningGateway, free_port, run_cli, wait_until
from tests.uplink.conftest import CloudBroker, make_pki

BUCKET = "fleet"
THING = "cloud-gw"
GATEWAY = """
[gateway]
thing_name = "cloud-gw"
status_interval_s = 0.5

[deployment]
health_timeout_s = 15
settle_s = 1
s3_endpoint_url = "{url}"
s3_region = "us-east-1"
ota_install_command = "{python} {recorder} {calls} {{deb}}"
ota_restart_command = "{supervisorctl} -s unix://{socket} restart core"
ota_health_timeout_s = 15

[[functions]]
name = "other"
code = "functions/other"
handler = "main.function_handler"
lifecycle = "long-lived"
run_as = "1002:1002"
"""
OTHER = "VERSION = {version}\n\ndef function_handler(event, context):\n    return VERSION\n"
RECORDER = "import sys\nwith open(sys.argv[1], 'a') as calls:\n    calls.write(sys.argv[2] + '\\n')\n"
# the version the running code reports in the core heartbeat: a stand-in install changes no code, so a
# package of this version is "running" after the restart and any other is not
RUNNING = running_version() or "unknown"


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()


def _gateway_toml(url: str, tmp: Path, socket: Path) -> str:
    (tmp / "recorder.py").write_text(RECORDER)
    venv_bin = Path(sys.executable).parent
    return GATEWAY.format(
        url=url,
        python=sys.executable,
        recorder=tmp / "recorder.py",
        calls=tmp / "calls.txt",
        supervisorctl=venv_bin / "supervisorctl",
        socket=socket,
    )


def _start(gateway_factory, short_tmp: Path, url: str) -> RunningGateway:
    # the gateway's state dir is short_tmp/s0 (gateway_factory), so its supervisord socket is known ahead
    socket = short_tmp / "s0" / "run" / "supervisor.sock"
    toml = _gateway_toml(url, short_tmp, socket)
    return gateway_factory(toml, files={"functions/other/main.py": OTHER.format(version=1)}, expect=_PROGRAMS)


_PROGRAMS = ("broker", "core", "fn-other")


def _reported(gw: RunningGateway, kind: str) -> dict:
    answer = gw.cli("shadow", "get", THING)
    if answer.returncode != 0:
        return {}
    return json.loads(answer.stdout).get("state", {}).get("reported", {}).get(kind) or {}


def _desire(gw: RunningGateway, kind: str, request: dict) -> None:
    answer = gw.cli("shadow", "update", THING, json.dumps({"state": {"desired": {kind: request}}}))
    assert answer.returncode == 0, answer.stderr


def _wait_reported(gw: RunningGateway, kind: str, version: str, timeout_s: float = 30) -> dict:
    return wait_until(  # type: ignore[return-value]
        lambda: (r := _reported(gw, kind)).get("version") == version and r,
        timeout_s,
        f"reported.{kind} for version {version}",
        interval_s=0.3,
    )


def _pids(gw: RunningGateway) -> dict[str, int]:
    return {name: p["pid"] for name, p in gw.status()["processes"].items()}


def _build_and_push(gw: RunningGateway, short_tmp: Path, s3_url: str, version: int) -> dict:
    """The running config with `other` at `version`, bundled and uploaded; the desired deployment."""
    new_config = short_tmp / f"config-v{version}"
    shutil.copytree(gw.config_dir, new_config)
    (new_config / "functions/other/main.py").write_text(OTHER.format(version=version))
    bundle = short_tmp / f"v{version}.tar.gz"
    built = run_cli("bundle", "build", str(new_config), "--out", str(bundle))
    assert built.returncode == 0, built.stderr
    pushed = run_cli(
        "bundle", "push", str(bundle), "--bucket", BUCKET, "--key", f"gw/v{version}.tar.gz",
        "--version", f"v{version}", "--endpoint-url", s3_url,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    return json.loads(pushed.stdout)["state"]["desired"]["deployment"]


def test_cloud_bundle_with_bad_checksum_is_refused_then_a_good_one_changes_only_its_function(
    gateway_factory, short_tmp: Path, s3_url: str
) -> None:
    gw = _start(gateway_factory, short_tmp, s3_url)
    desired = _build_and_push(gw, short_tmp, s3_url, 2)
    bundle = short_tmp / "v2.tar.gz"
    assert desired == {"version": "v2", "bucket": BUCKET, "key": "gw/v2.tar.gz", "sha256": sha256_file(bundle)}
    current = (gw.state_dir / "deployments" / "current").resolve()
    before = _pids(gw)

    _desire(gw, "deployment", {**desired, "version": "v2-bad", "sha256": "0" * 64})
    refused = _wait_reported(gw, "deployment", "v2-bad")
    assert refused["result"] == "refused" and "sha256 mismatch" in refused["reason"], refused
    assert (gw.state_dir / "deployments" / "current").resolve() == current
    assert _pids(gw) == before

    _desire(gw, "deployment", desired)
    done = _wait_reported(gw, "deployment", "v2")
    assert done["result"] == "ok", done
    assert done["at"].endswith("Z")
    after = _pids(gw)
    assert after["fn-other"] != before["fn-other"]
    assert {k: v for k, v in after.items() if k != "fn-other"} == {k: v for k, v in before.items() if k != "fn-other"}
    live = gw.state_dir / "deployments" / "current" / "config" / "functions" / "other" / "main.py"
    assert "VERSION = 2" in live.read_text()
    history = json.loads(gw.cli("deploy", "--history", "--json").stdout)
    assert [(e["version"], e["by"], e["result"]) for e in history][-2:] == [
        ("v2-bad", "cloud", "refused"),
        ("v2", "cloud", "succeeded"),
    ]
    assert "event=cloud-deployment-refused" in gw.cli("logs", "core").stdout


@pytest.fixture
def aws_iot(short_tmp: Path) -> Iterator[tuple[CloudBroker, CloudShadows]]:
    """A TLS mosquitto playing AWS IoT, with its shadow service [aws-shadow-semantics.md]."""
    (short_tmp / "cloud").mkdir()
    broker = AwsCloudBroker(make_pki(short_tmp / "pki"), short_tmp / "cloud", free_port())
    broker.start()
    try:
        service = CloudShadows(broker, short_tmp / "aws-shadows.db")
        try:
            yield broker, service
        finally:
            service.close()
    finally:
        broker.stop()


def test_deployment_desired_in_the_cloud_is_applied_and_its_outcome_reported_back_to_the_cloud(
    aws_iot: tuple[CloudBroker, CloudShadows], gateway_factory, short_tmp: Path, s3_url: str
) -> None:
    # issue 10: the fleet sets the gateway's own shadow in AWS IoT; the uplink syncs it down
    # (sync = "both", docs/operations.md), the core deploys, and the reported outcome syncs back up
    broker, cloud_shadows = aws_iot
    socket = short_tmp / "s0" / "run" / "supervisor.sock"
    toml = _gateway_toml(s3_url, short_tmp, socket)
    toml += f'\n[[shadows]]\nthing = "{THING}"\nsync = "both"\n\n' + broker.toml()
    programs = (*_PROGRAMS, "uplink")
    files = {"functions/other/main.py": OTHER.format(version=1)}
    gw = gateway_factory(toml, files=files, expect=programs)
    desired = _build_and_push(gw, short_tmp, s3_url, 2)
    before = _pids(gw)
    assert set(before) == set(programs)
    fleet = broker.subscriber(f"$aws/things/{THING}/shadow/update/documents", client_id="fleet")
    assert fleet.client is not None

    # what an application's UpdateThingShadow does: a publish on the thing's update topic in AWS IoT
    update = json.dumps({"state": {"desired": {"deployment": desired}}})
    fleet.client.publish(f"$aws/things/{THING}/shadow/update", update, qos=1).wait_for_publish(10)

    def reported_in_the_cloud() -> dict:
        for _topic, payload in fleet.snapshot():
            done = json.loads(payload)["current"]["state"].get("reported", {}).get("deployment") or {}
            if done.get("version") == "v2":
                return done
        return {}

    wait_until(reported_in_the_cloud, 60, "reported.deployment v2 in the cloud", interval_s=0.3)
    done = reported_in_the_cloud()
    assert done["result"] == "ok" and done["sha256"] == desired["sha256"], done
    assert done["at"].endswith("Z")
    state = cloud_shadows.state(THING)
    assert state is not None and state["desired"]["deployment"] == desired
    assert state["reported"]["deployment"] == done  # the cloud's shadow holds it, not just a message
    live = gw.state_dir / "deployments" / "current" / "config" / "functions" / "other" / "main.py"
    assert "VERSION = 2" in live.read_text()
    after = _pids(gw)
    assert after["fn-other"] != before["fn-other"]
    assert {k: v for k, v in after.items() if k != "fn-other"} == {k: v for k, v in before.items() if k != "fn-other"}
    # the restarted function runs from the newly deployed copy of its code
    deployed = Path(read_manifest(gw.state_dir / "functions")["other"].path)
    assert Path(f"/proc/{after['fn-other']}/cwd").resolve() == deployed.resolve()
    assert "VERSION = 2" in (deployed / "main.py").read_text()
    history = json.loads(gw.cli("deploy", "--history", "--json").stdout)
    assert [(e["version"], e["by"], e["result"]) for e in history][-1:] == [("v2", "cloud", "succeeded")]
    # the gateway wrote to the cloud's shadow once: the reported outcome (the desired came down, not up)
    assert cloud_shadows.sync_writes == [(THING, None, 2)]


def test_core_ota_refuses_a_bad_checksum_and_installs_a_good_package_across_a_core_restart(
    gateway_factory, short_tmp: Path, s3_url: str
) -> None:
    gw = _start(gateway_factory, short_tmp, s3_url)
    body = make_deb(short_tmp / "new.deb", RUNNING)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    s3.put_object(Bucket=BUCKET, Key=f"pkg/millgate_{RUNNING}_all.deb", Body=body)
    good = {"version": RUNNING, "bucket": BUCKET, "key": f"pkg/millgate_{RUNNING}_all.deb"}
    calls = short_tmp / "calls.txt"
    core_before = _pids(gw)["core"]
    assert gw.status()["components"]["core"]["version"] == RUNNING  # the core says what it runs

    _desire(gw, "package", {**good, "version": "9.0-bad", "sha256": "f" * 64})
    refused = _wait_reported(gw, "package", "9.0-bad")
    assert refused["result"] == "refused" and "sha256 mismatch" in refused["reason"], refused
    # the file is sound but is not the version asked for: refused before anything is installed
    _desire(gw, "package", {**good, "version": "9.1", "sha256": hashlib.sha256(body).hexdigest()})
    refused = _wait_reported(gw, "package", "9.1")
    assert refused["result"] == "refused", refused
    assert f"is millgate {RUNNING}, not the requested version 9.1" in refused["reason"], refused
    assert not calls.exists()
    assert _pids(gw)["core"] == core_before

    _desire(gw, "package", {**good, "sha256": hashlib.sha256(body).hexdigest()})
    done = _wait_reported(gw, "package", RUNNING)
    assert done["result"] == "ok" and "runs it" in done["reason"], done
    # the job survived the restart of the core that spawned it, and the new core reported its result
    assert _pids(gw)["core"] != core_before
    assert calls.read_text().splitlines() == [str(gw.state_dir / "packages" / "incoming.deb")]
    kept = kept_package(gw.state_dir)
    assert kept is not None and kept.version == RUNNING and kept.deb.read_bytes() == body


def test_ota_whose_restarted_core_still_runs_the_old_version_rolls_back(
    gateway_factory, short_tmp: Path, s3_url: str
) -> None:
    # the install "succeeds" and the service restarts, but the code that comes back is the old one (here
    # the stand-in install changes nothing): a fresh heartbeat is not enough, the version must be the package's
    socket = short_tmp / "s0" / "run" / "supervisor.sock"
    toml = _gateway_toml(s3_url, short_tmp, socket).replace("ota_health_timeout_s = 15", "ota_health_timeout_s = 4")
    gw = gateway_factory(toml, files={"functions/other/main.py": OTHER.format(version=1)}, expect=_PROGRAMS)
    old = make_deb(short_tmp / f"millgate_{RUNNING}_all.deb", RUNNING)
    keep_installed(gw.state_dir, short_tmp / f"millgate_{RUNNING}_all.deb", RUNNING)
    body = make_deb(short_tmp / "new.deb", "9.0")
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").put_object(
        Bucket=BUCKET, Key="millgate_9.0_all.deb", Body=body
    )
    sha256 = hashlib.sha256(body).hexdigest()

    _desire(gw, "package", {"version": "9.0", "bucket": BUCKET, "key": "millgate_9.0_all.deb", "sha256": sha256})
    done = _wait_reported(gw, "package", "9.0", timeout_s=60)
    assert done["result"] == "rolled-back", done
    assert f"the restarted core runs millgate {RUNNING}, not the package's 9.0" in done["reason"], done
    assert f"rolled back to package {RUNNING}" in done["reason"], done
    calls = (short_tmp / "calls.txt").read_text().splitlines()
    assert calls == [str(gw.state_dir / "packages" / "incoming.deb"), str(gw.state_dir / "packages" / "current.deb")]
    kept = kept_package(gw.state_dir)
    assert kept is not None and kept.version == RUNNING and kept.deb.read_bytes() == old


def test_bundle_push_of_a_package_names_the_version_inside_it(short_tmp: Path, s3_url: str) -> None:
    deb = short_tmp / "millgate_9.9_all.deb"  # the name says 9.9; the control file is what counts
    body = make_deb(deb, "1.4.0")
    pushed = run_cli("bundle", "push", str(deb), "--bucket", BUCKET, "--key", "pkg/a.deb", "--endpoint-url", s3_url)
    assert pushed.returncode == 0, pushed.stderr
    desired = json.loads(pushed.stdout)["state"]["desired"]["package"]
    assert desired == {
        "version": "1.4.0",
        "bucket": BUCKET,
        "key": "pkg/a.deb",
        "sha256": hashlib.sha256(body).hexdigest(),
    }

    wrong = run_cli("bundle", "push", str(deb), "--bucket", BUCKET, "--key", "pkg/b.deb", "--version", "1.5.0")
    assert wrong.returncode == 2 and f"{deb} is millgate 1.4.0, not --version 1.5.0" in wrong.stderr
    broken = short_tmp / "broken.deb"
    broken.write_bytes(b"not a package")
    refused = run_cli("bundle", "push", str(broken), "--bucket", BUCKET, "--key", "pkg/c.deb")
    assert refused.returncode == 2 and "broken.deb: not a readable Debian package" in refused.stderr
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="pkg/")["Contents"]}
    assert "pkg/a.deb" in keys and not keys & {"pkg/b.deb", "pkg/c.deb"}  # a refused file is not uploaded


def test_ota_that_does_not_come_up_healthy_reinstalls_the_kept_package(short_tmp: Path, s3_url: str) -> None:
    config = short_tmp / "etc"
    (config / "functions/other").mkdir(parents=True)
    (config / "functions/other/main.py").write_text(OTHER.format(version=1))
    state = short_tmp / "state"  # no gateway runs here: the restart never yields a fresh core heartbeat
    toml = _gateway_toml(s3_url, short_tmp, state / "run" / "supervisor.sock")
    toml = toml.replace("ota_health_timeout_s = 15", "ota_health_timeout_s = 1").replace(
        f"{Path(sys.executable).parent / 'supervisorctl'} -s unix://{state / 'run' / 'supervisor.sock'} restart core",
        "true",
    )
    (config / "gateway.toml").write_text(toml)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    new = make_deb(short_tmp / "new.deb", "2.0")
    s3.put_object(Bucket=BUCKET, Key="millgate_2.0_amd64.deb", Body=new)
    request = Request("2.0", BUCKET, "millgate_2.0_amd64.deb", hashlib.sha256(new).hexdigest())
    calls = short_tmp / "calls.txt"

    result, reason = run_package_job(request, config, state)
    assert result == "failed" and "no previous package kept" in reason, reason

    calls.unlink()
    old = short_tmp / "millgate_1.0_amd64.deb"
    old_body = make_deb(old, "1.0")
    keep_installed(state, old, "1.0")
    result, reason = run_package_job(request, config, state)
    # no gateway runs here, so the reinstalled old package cannot come up healthy either: said so
    assert result == "rollback-failed" and "rolling back to package 1.0 failed" in reason, reason
    assert calls.read_text().splitlines() == [
        str(state / "packages" / "incoming.deb"),
        str(state / "packages" / "current.deb"),
    ]
    kept = kept_package(state)
    assert kept is not None and kept.version == "1.0" and kept.deb.read_bytes() == old_body


def test_first_ota_keeps_the_installed_package_rebuilt_from_its_files_and_rolls_back_to_it(
    short_tmp: Path, s3_url: str
) -> None:
    # issue 10 item 4: roll back "to the previous package"; before the first OTA none is kept (apt installed
    # it), so ota_keep_command (dpkg-repack on a real gateway) rebuilds it first. Here a stand-in command
    # leaves the package dpkg-repack would, named <name>_<version>_<arch>.deb, in its scratch directory.
    config = short_tmp / "etc"
    (config / "functions/other").mkdir(parents=True)
    (config / "functions/other/main.py").write_text(OTHER.format(version=1))
    state = short_tmp / "state"  # no gateway runs here: the restart never yields a fresh core heartbeat
    installed = short_tmp / "installed.deb"
    installed_body = make_deb(installed, "1.5")
    toml = _gateway_toml(s3_url, short_tmp, state / "run" / "supervisor.sock")
    toml = toml.replace("ota_health_timeout_s = 15", "ota_health_timeout_s = 1").replace(
        f"{Path(sys.executable).parent / 'supervisorctl'} -s unix://{state / 'run' / 'supervisor.sock'} restart core",
        "true",
    )
    keep = f'ota_keep_command = "cp {installed} millgate_1.5_all.deb"'
    toml = toml.replace("ota_health_timeout_s = 1", f"ota_health_timeout_s = 1\n{keep}")
    (config / "gateway.toml").write_text(toml)
    body = make_deb(short_tmp / "new.deb", "2.0")
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").put_object(
        Bucket=BUCKET, Key="millgate_2.0_amd64.deb", Body=body
    )
    request = Request("2.0", BUCKET, "millgate_2.0_amd64.deb", hashlib.sha256(body).hexdigest())
    assert kept_package(state) is None

    result, reason = run_package_job(request, config, state)
    # no gateway runs here, so the rebuilt package cannot come up healthy either; it was reinstalled
    assert result == "rollback-failed" and "rolling back to package 1.5 failed" in reason, reason
    calls = (short_tmp / "calls.txt").read_text().splitlines()
    assert calls == [str(state / "packages" / "incoming.deb"), str(state / "packages" / "current.deb")]
    kept = kept_package(state)
    assert kept is not None and kept.version == "1.5" and kept.deb.read_bytes() == installed_body
    assert not list((state / "packages").glob("keep-*")), "the scratch directory is removed"


def _push_unchecked(s3_url: str, config_dir: Path, key: str) -> dict:
    """A bundle of `config_dir` as it is (`bundle build` refuses an invalid config), uploaded; its request."""
    members = []
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file()):
        members.append((tarfile.TarInfo(path.relative_to(config_dir).as_posix()), path.read_bytes()))
    body = _tar(members)
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").put_object(Bucket=BUCKET, Key=key, Body=body)
    return {"bucket": BUCKET, "key": key, "sha256": hashlib.sha256(body).hexdigest()}


def test_cloud_bundle_with_an_invalid_config_or_missing_code_is_refused_and_nothing_changes(
    gateway_factory, short_tmp: Path, s3_url: str
) -> None:
    # issue 10, bad input: refused with the reason in the shadow and the log, the running config untouched
    gw = _start(gateway_factory, short_tmp, s3_url)
    invalid = short_tmp / "invalid"
    shutil.copytree(gw.config_dir, invalid)
    (invalid / "gateway.toml").write_text((invalid / "gateway.toml").read_text() + "\n[spool]\nbogus = 1\n")
    no_code = short_tmp / "no-code"
    shutil.copytree(gw.config_dir, no_code)
    shutil.rmtree(no_code / "functions" / "other")
    current = (gw.state_dir / "deployments" / "current").resolve()
    before = _pids(gw)

    cases = [
        ("v-invalid", invalid, "gateway.toml: spool.bogus: unknown key"),
        ("v-no-code", no_code, "functions[0].code: 'functions/other' does not exist"),
    ]
    for version, config, reason in cases:
        _desire(gw, "deployment", {"version": version, **_push_unchecked(s3_url, config, f"gw/{version}.tar.gz")})
        refused = _wait_reported(gw, "deployment", version)
        assert refused["result"] == "refused" and reason in refused["reason"], refused
        assert (gw.state_dir / "deployments" / "current").resolve() == current
        assert _pids(gw) == before
    history = json.loads(gw.cli("deploy", "--history", "--json").stdout)
    assert [(e["version"], e["result"]) for e in history][-2:] == [("v-invalid", "refused"), ("v-no-code", "refused")]
    core_log = gw.cli("logs", "core").stdout
    assert "spool.bogus: unknown key" in core_log and "functions[0].code" in core_log


def test_ota_whose_install_fails_restarts_nothing_and_says_why(gateway_factory, short_tmp: Path, s3_url: str) -> None:
    socket = short_tmp / "s0" / "run" / "supervisor.sock"
    toml = _gateway_toml(s3_url, short_tmp, socket)
    toml = re.sub(r"ota_install_command = .*", 'ota_install_command = "false"', toml)
    gw = gateway_factory(toml, files={"functions/other/main.py": OTHER.format(version=1)}, expect=_PROGRAMS)
    installed = short_tmp / "millgate_1.0_amd64.deb"
    old = make_deb(installed, "1.0")
    keep_installed(gw.state_dir, installed, "1.0")
    new = make_deb(short_tmp / "new.deb", "2.0")
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    s3.put_object(Bucket=BUCKET, Key="millgate_2.0_amd64.deb", Body=new)
    before = _pids(gw)

    sha256 = hashlib.sha256(new).hexdigest()
    _desire(gw, "package", {"version": "2.0", "bucket": BUCKET, "key": "millgate_2.0_amd64.deb", "sha256": sha256})
    failed = _wait_reported(gw, "package", "2.0")
    assert failed["result"] == "failed", failed
    assert "install (false) exited 1" in failed["reason"], failed
    assert "nothing was restarted, package 1.0 still runs" in failed["reason"], failed
    assert _pids(gw) == before  # the core was never restarted
    kept = kept_package(gw.state_dir)
    assert kept is not None and kept.version == "1.0" and kept.deb.read_bytes() == old
    assert not (gw.state_dir / "packages" / "incoming.deb").exists()


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for info, body in members:
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body) if info.isfile() else None)
    return out.getvalue()


@pytest.mark.parametrize(
    ("member", "kind"),
    [("../escaped.txt", tarfile.REGTYPE), ("/etc/escaped.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)],
)
def test_bundle_member_that_could_escape_is_refused(tmp_path: Path, member: str, kind: bytes) -> None:
    info = tarfile.TarInfo(member)
    info.type = kind
    info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar([(tarfile.TarInfo("gateway.toml"), b"[gateway]\n"), (info, b"x")]))
    with pytest.raises(JobRefused):
        unpack_bundle(archive, tmp_path / "out" / "config", DeploymentSection().max_bundle_bytes)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "config" / "link").exists()
