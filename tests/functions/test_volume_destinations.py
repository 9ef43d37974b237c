"""Volumes at a destination path (issue 4 item 4, "a host directory, mounted or exposed at a destination
path"): each function process, an on-demand worker or a long-lived runner, gets a private mount namespace
with the volume bind-mounted at its `destination`, read-only for `ro`, as Greengrass v1's containers
mounted a volume resource at its DestinationPath (../shared/greengrass-v1-contract.md). The host sees only
the empty mount point. A destination the kernel will not mount on fails that function alone, logged with
the function, the resource and the errno. The config refuses destinations it must never mount on.

Where the kernel refuses unshare(CLONE_NEWNS) (an unprivileged container) the gateway tests are skipped
with the errno as the reason.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.mount_namespace import CLONE_NEWNS
from gateway.config_loader import ConfigInvalid, load_config
from tests.fixtures.gateway import RunningGateway, start_gateway, wait_until
from tests.functions.test_runtime import function_status, invoke

HANDLER = """
import errno, os

RO = os.environ["RO_AT"]
RW = os.environ["RW_AT"]

def function_handler(event, context):
    answer = {{"read": open(os.path.join(RO, "hello.txt")).read()}}
    try:
        with open(os.path.join(RO, "{name}-was-here.txt"), "w") as out:
            out.write("no")
        answer["ro_write"] = "written"
    except OSError as exc:
        answer["ro_write"] = errno.errorcode.get(exc.errno, str(exc.errno))
    with open(os.path.join(RW, "{name}.txt"), "w") as out:
        out.write("from {name}")
    return answer
"""

FUNCTION = """
[[functions]]
name = "{name}"
code = "functions/{name}"
handler = "{name}.function_handler"
lifecycle = "{lifecycle}"
run_as = "{uid}:{uid}"
environment = {{ RO_AT = "{ro_at}", RW_AT = "{rw_at}" }}
resources = [{{ name = "recipes", access = "ro" }}, {{ name = "{rw}", access = "rw" }}]
"""


def _unshare_refusal() -> str | None:
    """None when this kernel gives a child its own mount namespace; the errno otherwise."""
    child = os.fork()
    if child == 0:
        failed = ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNS) != 0
        os._exit(ctypes.get_errno() if failed else 0)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return None if code == 0 else f"errno {code} ({errno.errorcode.get(code, '?')}): {os.strerror(code)}"


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    if os.geteuid() != 0:
        pytest.skip("mount namespaces and other uids need root")
    refused = _unshare_refusal()
    if refused:
        pytest.skip(f"the kernel refuses unshare(CLONE_NEWNS) here: {refused}")
    base = Path("/tmp") / f"mgvol{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    (base / "recipes").mkdir(mode=0o755)
    (base / "recipes" / "hello.txt").write_text("recipe 42")
    (base / "out").mkdir(mode=0o755)
    (base / "a-file").write_text("not a directory")
    config = base / "etc"
    functions = [
        ("viewer", "on-demand", 1051, "results"),
        ("keeper", "long-lived", 1052, "results"),
        ("blocked", "on-demand", 1053, "blocked-out"),
    ]
    text = '[gateway]\nthing_name = "volume-destinations-test"\nstatus_interval_s = 0.5\n'
    ro_at, rw_at = base / "mnt" / "recipes", base / "mnt" / "results"
    for name, lifecycle, uid, rw in functions:
        (config / "functions" / name).mkdir(parents=True)
        (config / "functions" / name / f"{name}.py").write_text(HANDLER.format(name=name))
        text += FUNCTION.format(name=name, lifecycle=lifecycle, uid=uid, rw=rw, ro_at=ro_at, rw_at=rw_at)
    text += f"""
[[resources]]
name = "recipes"
kind = "volume"
path = "{base / "recipes"}"
destination = "{ro_at}"

[[resources]]
name = "results"
kind = "volume"
path = "{base / "out"}"
destination = "{rw_at}"

[[resources]]
name = "blocked-out"
kind = "volume"
path = "{base / "out"}"
destination = "{base / "a-file" / "results"}"
"""
    (config / "gateway.toml").write_text(text)
    running = start_gateway(config, base / "s", expect=("broker", "core", "fn-keeper"))
    running.base = base  # type: ignore[attr-defined]
    yield running
    running.stop()
    running.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("function", ["viewer", "keeper"])
def test_volume_is_read_through_its_destination_and_ro_destination_is_not_writable(
    gw: RunningGateway, function: str
) -> None:
    base: Path = gw.base  # type: ignore[attr-defined]
    answer = invoke(gw, function, {})
    assert answer["function_error"] is None, answer
    assert answer["result"]["read"] == "recipe 42"
    assert answer["result"]["ro_write"] == "EROFS"  # the read-only bind, not only the ACL, refuses it
    assert (base / "out" / f"{function}.txt").read_text() == f"from {function}"  # rw lands in the source
    # the host keeps the empty mount points: the binds live only in the function's namespace
    assert (base / "mnt" / "recipes").is_dir() and not any((base / "mnt" / "recipes").iterdir())
    assert not any((base / "mnt" / "results").iterdir())


def test_destination_the_kernel_refuses_fails_that_function_alone_and_is_logged(gw: RunningGateway) -> None:
    answer = invoke(gw, "blocked", {})
    assert answer["function_error"] is not None, answer

    def refusal_line() -> str:
        # supervisord writes the worker's output to the log on its own schedule, maybe after the answer
        logged = "\n".join(p.read_text(errors="replace") for p in gw.paths.log_dir.rglob("*.log"))
        return next((x for x in logged.splitlines() if "event=mounts-refused" in x), "")

    line = str(wait_until(refusal_line, 10, "the mounts-refused log line"))
    assert "function 'blocked'" in line and "resource 'blocked-out'" in line and "ENOTDIR" in line, line
    # the next messages get the same error at once, without a worker started (and refused) for each
    errors = [str(invoke(gw, "blocked", {})["error"]) for _ in range(5)]
    assert all("could not be mounted" in error for error in errors), errors
    deferred = [error for error in errors if "next start in" in error]
    assert len(deferred) >= 4, errors  # the first retry waits 2.5-5 s
    logged = "\n".join(p.read_text(errors="replace") for p in gw.paths.log_dir.rglob("*.log"))
    assert logged.count("event=mounts-refused") <= 2, logged.count("event=mounts-refused")
    assert invoke(gw, "viewer", {})["function_error"] is None  # the rest of the gateway runs
    wait_until(lambda: function_status(gw, "keeper")["function_state"] == "ready", 10, "keeper ready")


GATEWAY = """
[gateway]
thing_name = "plant-a-gw1"

[[resources]]
name = "data"
kind = "{kind}"
path = "{path}"
destination = "{destination}"
"""


@pytest.mark.parametrize(
    ("kind", "path", "destination", "message"),
    [
        ("volume", "/srv/data", "data", "'data' must be an absolute path"),
        ("volume", "/srv/data", "/proc/data", "destinations under /sys, /proc, /dev are refused"),
        ("volume", "/srv/data", "//tmp/../sys/x", "destinations under /sys, /proc, /dev are refused"),
        ("volume", "/srv/data", "/", "holds the config dir"),
        ("device", "/dev/null", "/mnt/null", 'destination: only for kind = "volume"'),
    ],
)
def test_config_refuses_destinations_a_function_must_not_get(
    tmp_path: Path, kind: str, path: str, destination: str, message: str
) -> None:
    (tmp_path / "gateway.toml").write_text(GATEWAY.format(kind=kind, path=path, destination=destination))
    with pytest.raises(ConfigInvalid) as refused:
        load_config(tmp_path)
    assert message in str(refused.value), str(refused.value)


def test_config_refuses_a_gateway_dir_as_destination_and_two_volumes_at_one_place(tmp_path: Path) -> None:
    text = GATEWAY.format(kind="volume", path="/srv/data", destination=tmp_path / "functions")
    text += '\n[[resources]]\nname = "more"\nkind = "volume"\npath = "/srv/more"\ndestination = "/mnt/m"\n'
    text += '\n[[resources]]\nname = "again"\nkind = "volume"\npath = "/srv/again"\ndestination = "/mnt/m/"\n'
    (tmp_path / "functions" / "f").mkdir(parents=True)
    text += """
[[functions]]
name = "f"
code = "functions/f"
handler = "f.handler"
run_as = "1001:1001"
resources = [{ name = "more" }, { name = "again" }]
"""
    (tmp_path / "gateway.toml").write_text(text)
    with pytest.raises(ConfigInvalid) as refused:
        load_config(tmp_path)
    problems = {p.path: p.message for p in refused.value.problems}
    assert "lies in the gateway config dir" in problems["resources[0].destination"], problems
    assert "as 'more' does" in problems["functions[0].resources[1].name"], problems
