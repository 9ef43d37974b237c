"""Issue 3 item 5: each component's broker secret readable by no other component's user. Functions
have their own run_as uids and the core is root; the uplink, each adapter and logship get a uid of
their own from [gateway] component_uids (gateway/component_users.py) when millgate starts as root
with its service user present, as the Debian package installs it.

The end-to-end test gives millgate that service user without touching the machine's accounts: the
gateway runs in a mount namespace of its own where /etc/passwd and /etc/group are copies with a
`millgate` entry bind-mounted over the real ones.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from gateway.component_state import move_legacy_state
from gateway.component_users import ComponentUidError, allocate, component_users
from gateway.config_loader import ConfigInvalid, load_config
from gateway.credentials import ensure_credentials
from gateway.owned_dirs import NotADirectory, make_owned_dir
from gateway.paths import GatewayPaths
from storage.spool import Message, Spool
from tests.fixtures.gateway import REPO, RunningGateway, free_port, readable_by, wait_until

AWS_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
AWS_TEST_ENV = {key.upper(): value for key, value in AWS_KEYS.items()} | {"AWS_DEFAULT_REGION": "us-east-1"}
SERVICE_UID = 1500  # the `millgate` account inside the test's namespace
COMPONENT_UIDS = range(60100, 60200)

GATEWAY = """
[gateway]
thing_name = "uids-gw"
status_interval_s = 0.5
log_dir = "{logs}"

[broker]
tls_port = {tls}

[discovery]
port = {discovery}

[logging.cloudwatch]
endpoint_url = "http://127.0.0.1:{moto}"
region = "us-east-1"
flush_interval_s = 0.5

[[subscriptions]]
source = "adapter:line1"
target = "cloud"
topic = "line1/#"
"""

MODBUS = """
name = "line1"
protocol = "modbus"
qos = 1

[[devices]]
name = "press-01"
transport = "tcp"
host = "127.0.0.1"
port = {port}
unit = 1
poll_ms = 200

[[devices.tags]]
name = "cycle"
table = "holding"
address = 0
type = "uint16"
publish = "every_poll"
"""

OPCUA = """
name = "line2"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/"

[[nodes]]
name = "temperature"
node_id = "ns=2;s=Line2.Temperature"
"""


def test_allocation_keeps_each_components_uid_and_gives_new_ones_the_lowest_free() -> None:
    first = allocate(["uplink", "adapter-line1"], COMPONENT_UIDS, {})
    assert first == {"adapter-line1": 60100, "uplink": 60101}
    # an adapter added before line1 in name order does not move anyone's uid (their files are theirs)
    second = allocate(["uplink", "adapter-line1", "adapter-a"], COMPONENT_UIDS, first)
    assert second == {"adapter-line1": 60100, "uplink": 60101, "adapter-a": 60102}
    # a removed component's uid is free again; a saved uid outside a narrowed range is re-allocated
    assert allocate(["uplink", "adapter-b"], range(60101, 60103), second) == {"uplink": 60101, "adapter-b": 60102}
    with pytest.raises(ComponentUidError, match="has 1 uids for 2 components"):
        allocate(["uplink", "adapter-line1"], range(60100, 60101), {})


def test_a_uid_that_an_account_has_is_refused(tmp_path: Path) -> None:
    taken = pwd.getpwnam("nobody").pw_uid
    with pytest.raises(ComponentUidError, match="belongs to the account 'nobody'"):
        component_users({"uplink": ()}, range(taken, taken + 1), 1500, tmp_path)
    assert not (tmp_path / "component-uids.json").exists()


def test_a_function_may_not_run_as_a_component_uid(tmp_path: Path) -> None:
    (tmp_path / "functions" / "f").mkdir(parents=True)
    (tmp_path / "functions" / "f" / "f.py").write_text("def handler(event, context):\n    return event\n")
    (tmp_path / "gateway.toml").write_text(
        '[gateway]\nthing_name = "gw"\ncomponent_uids = "61000-61009"\n\n'
        '[[functions]]\nname = "f"\ncode = "functions/f"\nhandler = "f.handler"\nrun_as = "61005:1001"\n'
    )
    with pytest.raises(ConfigInvalid) as refused:
        load_config(tmp_path)
    assert "functions[0].run_as: uid 61005 is one of [gateway] component_uids (61000-61009)" in str(refused.value)
    (tmp_path / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\ncomponent_uids = "61000-60000"\n')
    with pytest.raises(ConfigInvalid, match=r"gateway\.component_uids"):
        load_config(tmp_path)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError(f"no Uid line for {pid}")


def _accounts_files(base: Path) -> tuple[Path, Path]:
    """Copies of the machine's passwd and group with a `millgate` account and group added."""
    passwd, group = base / "passwd", base / "group"
    passwd.write_text(
        Path("/etc/passwd").read_text()
        + f"millgate:x:{SERVICE_UID}:{SERVICE_UID}:millgate:/nonexistent:/usr/sbin/nologin\n"
    )
    group.write_text(Path("/etc/group").read_text() + f"millgate:x:{SERVICE_UID}:\n")
    return passwd, group


@pytest.fixture
def packaged_gateway() -> Iterator[tuple[RunningGateway, int]]:
    """The gateway as the package runs it, and the port of the moto server standing in for CloudWatch."""
    if os.geteuid() != 0:
        pytest.skip("uid switching needs root")
    try:
        pwd.getpwuid(SERVICE_UID)
        pytest.skip(f"uid {SERVICE_UID} is an account on this machine; the test needs it free")
    except KeyError:
        pass
    base = Path("/tmp") / f"mgu{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    simulator = subprocess.Popen(
        [sys.executable, "-m", "adapters.modbus.simulator", "--port", str(modbus := free_port())],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cloudwatch = ThreadedMotoServer(ip_address="127.0.0.1", port=(moto := free_port()), verbose=False)
    cloudwatch.start()
    config, state = base / "etc", base / "s"
    (config / "adapters").mkdir(parents=True)
    # as the package makes /var/log/millgate: 0750, root's, group adm (logship gets that group)
    logs = base / "log"
    logs.mkdir(mode=0o750)
    os.chown(logs, 0, grp.getgrnam("adm").gr_gid)
    (config / "gateway.toml").write_text(GATEWAY.format(tls=free_port(), discovery=free_port(), moto=moto, logs=logs))
    (config / "adapters" / "line1.toml").write_text(MODBUS.format(port=modbus))
    (config / "adapters" / "line2.toml").write_text(OPCUA.format(port=free_port()))
    passwd, group = _accounts_files(base)
    mounts = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"'
    millgate = str(Path(sys.executable).parent / "millgate")
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mounts, "sh", str(passwd), str(group)]
    argv += [millgate, "run", "--config", str(config), "--state", str(state)]
    output = base / "gateway.out"
    env = {**os.environ, **AWS_TEST_ENV}
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=env
        )
    gw = RunningGateway(config, state, process, output)
    try:
        yield gw, moto
    finally:
        gw.stop()
        gw.kill_leftovers()
        cloudwatch.stop()
        simulator.terminate()
        simulator.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def test_uplink_and_each_adapter_run_under_uids_of_their_own_and_cannot_read_each_others_secrets(
    packaged_gateway: tuple[RunningGateway, int],
) -> None:
    gw, moto = packaged_gateway
    paths: GatewayPaths = gw.paths
    programs = ("broker", "core", "uplink", "adapter-line1", "adapter-line2", "logship")

    def running() -> dict[str, int] | None:
        if gw.process.poll() is not None:
            raise AssertionError(f"millgate run exited {gw.process.returncode}:\n{gw.output.read_text()}")
        if not paths.supervisor_socket.exists():
            return None
        processes = gw.status()["processes"]
        pids = {name: processes.get(name, {}).get("pid") for name in programs}
        return pids if all(pids.values()) and all(p["state"] == "RUNNING" for p in processes.values()) else None

    pids = wait_until(running, 30, "every program running")
    assert isinstance(pids, dict)
    uids = {name: _uid_of(pid) for name, pid in pids.items()}
    allocated = json.loads((paths.state_dir / "component-uids.json").read_text())
    assert uids["core"] == 0 and uids["broker"] == SERVICE_UID
    own = ("uplink", "adapter-line1", "adapter-line2", "logship")
    for component in own:
        assert uids[component] == allocated[component] and uids[component] in COMPONENT_UIDS
    assert len({uids[component] for component in own}) == len(own)
    # `millgate status` shows who each runs as
    shown = gw.status()["processes"]
    assert {name: shown[name]["uid"] for name in programs} == uids
    listing = gw.cli("status").stdout
    assert f" {uids['uplink']} " in next(line for line in listing.splitlines() if line.startswith("uplink "))

    # the adapter's data reaches the uplink's spool, in the directory the uplink alone owns
    def spooled() -> int:
        if not paths.spool_db.exists():
            return 0
        with sqlite3.connect(f"file:{paths.spool_db}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])

    wait_until(spooled, 30, "line1's values in the uplink's spool")
    assert paths.uplink_dir.stat().st_uid == uids["uplink"] and paths.spool_db.stat().st_uid == uids["uplink"]
    assert paths.uplink_dir.stat().st_mode & 0o777 == 0o700
    assert paths.opcua_dir("line2").stat().st_uid == uids["adapter-line2"]

    # logship, under its own uid, reads the logs and saves its offsets in its own directory
    logs = boto3.client("logs", endpoint_url=f"http://127.0.0.1:{moto}", region_name="us-east-1", **AWS_KEYS)

    def shipped() -> bool:
        try:
            events = logs.get_log_events(logGroupName="/millgate/uids-gw", logStreamName="system/core")["events"]
        except logs.exceptions.ResourceNotFoundException:
            return False
        return any("event=starting" in e["message"] for e in events)

    wait_until(shipped, 30, "the core's log lines in CloudWatch", interval_s=0.3)
    offsets = paths.logship_dir / "logship-offsets.json"
    wait_until(offsets.exists, 10, "logship's offsets")
    assert offsets.stat().st_uid == uids["logship"] and paths.logship_dir.stat().st_uid == uids["logship"]

    secrets = {name: paths.credentials_dir / f"{name}.json" for name in ("uplink", "adapter.line1", "adapter.line2")}
    owner_of = {"uplink": "uplink", "adapter.line1": "adapter-line1", "adapter.line2": "adapter-line2"}
    readers = [*owner_of.values(), "logship"]
    for identity, secret in secrets.items():
        assert secret.stat().st_uid == uids[owner_of[identity]] and secret.stat().st_mode & 0o777 == 0o600
        for component in readers:
            assert readable_by(uids[component], secret, SERVICE_UID) == (component == owner_of[identity]), (
                component,
                identity,
            )
    for component in readers:
        assert not readable_by(uids[component], paths.credentials_dir / "core.json", SERVICE_UID)
        assert not readable_by(uids[component], paths.ca_key, SERVICE_UID)
        assert not readable_by(uids[component], paths.spool_db, SERVICE_UID) or component == "uplink"


def test_state_from_the_old_layout_moves_into_the_components_directories(tmp_path: Path) -> None:
    paths = GatewayPaths.resolve(tmp_path / "etc", tmp_path / "s", None)
    paths.state_dir.mkdir()
    spool = Spool(paths.state_dir / "spool.db")
    spool.append([Message("plant/a", b"1"), Message("plant/b", b"2")])
    spool.close()
    (paths.state_dir / "bulk").mkdir()
    (paths.state_dir / "bulk" / "batch-1.jsonl.gz").write_bytes(b"batch")
    (paths.state_dir / "logship-offsets.json").write_text('{"core": {}}')
    paths.logship_dir.mkdir()
    (paths.logship_dir / "logship-offsets.json").write_text('{"newer": {}}')  # written last: kept
    os.utime(paths.state_dir / "logship-offsets.json", (1_000_000_000, 1_000_000_000))

    move_legacy_state(paths)

    assert not (paths.state_dir / "spool.db").exists() and not (paths.state_dir / "bulk").exists()
    moved = Spool(paths.spool_db)
    assert moved.stats().messages == 2
    moved.close()
    assert (paths.bulk_dir / "batch-1.jsonl.gz").read_bytes() == b"batch"
    assert (paths.logship_dir / "logship-offsets.json").read_text() == '{"newer": {}}'
    assert not (paths.state_dir / "logship-offsets.json").exists()


def test_a_database_is_not_moved_in_part(tmp_path: Path) -> None:
    paths = GatewayPaths.resolve(tmp_path / "etc", tmp_path / "s", None)
    paths.uplink_dir.mkdir(parents=True)
    (paths.state_dir / "spool.db").write_bytes(b"old database")
    (paths.uplink_dir / "spool.db-wal").write_bytes(b"a newer WAL")  # not the old database's
    move_legacy_state(paths)
    assert (paths.state_dir / "spool.db").read_bytes() == b"old database"
    assert not paths.spool_db.exists()


def test_an_adapter_deployed_later_gets_a_uid_of_its_own_and_the_others_keep_theirs(
    packaged_gateway: tuple[RunningGateway, int],
) -> None:
    gw, _ = packaged_gateway
    paths = gw.paths

    def pids(names: tuple[str, ...]) -> dict[str, int] | None:
        if not paths.supervisor_socket.exists():
            return None
        processes = gw.status()["processes"]
        found = {name: processes.get(name, {}).get("pid") for name in names}
        running = all(processes.get(n, {}).get("state") == "RUNNING" for n in names)
        return found if running and all(found.values()) else None

    before = wait_until(lambda: pids(("uplink", "adapter-line1")), 30, "uplink and line1 running")
    assert isinstance(before, dict)
    allocated = json.loads((paths.state_dir / "component-uids.json").read_text())
    (gw.config_dir / "adapters" / "line0.toml").write_text(
        (gw.config_dir / "adapters" / "line1.toml").read_text().replace('name = "line1"', 'name = "line0"')
    )
    # deploy as the operator would, on the same machine: inside the gateway's mount namespace, where
    # the millgate account exists
    supervisord = gw.process.pid
    millgate = str(Path(sys.executable).parent / "millgate")
    argv = ["nsenter", f"--target={supervisord}", "--mount", "--", millgate, "deploy"]
    deployed = subprocess.run(
        [*argv, "--config", str(gw.config_dir), "--state", str(paths.state_dir)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    after = wait_until(lambda: pids(("uplink", "adapter-line1", "adapter-line0")), 30, "line0 running")
    assert isinstance(after, dict)
    now = json.loads((paths.state_dir / "component-uids.json").read_text())
    assert {k: now[k] for k in allocated} == allocated, "a component's uid never moves"
    assert now["adapter-line0"] in COMPONENT_UIDS and now["adapter-line0"] not in allocated.values()
    assert _uid_of(after["adapter-line0"]) == now["adapter-line0"]
    assert after["uplink"] == before["uplink"] and after["adapter-line1"] == before["adapter-line1"]
    secret = paths.credentials_dir / "adapter.line0.json"
    assert secret.stat().st_uid == now["adapter-line0"]
    assert not readable_by(now["adapter-line1"], secret, SERVICE_UID)


def test_root_follows_no_link_left_where_it_prepares_a_directory_or_a_secret(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    (target / "precious").write_text("x")
    link = tmp_path / "uplink"
    link.symlink_to(target)
    with pytest.raises(NotADirectory, match="a symbolic link or not a directory"):
        make_owned_dir(link, 0o700, (60123, 60123), whole_tree=True)
    assert target.stat().st_mode & 0o777 == 0o755 and (target / "precious").stat().st_uid == os.geteuid()

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "core.json").symlink_to(target / "precious")
    ensure_credentials(credentials, "core", (os.geteuid(), os.getegid()))
    assert not (credentials / "core.json").is_symlink()  # replaced by a secret of its own
    assert (target / "precious").read_text() == "x"
