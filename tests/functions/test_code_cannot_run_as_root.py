"""A function's code never decides what runs as root, and never makes root change files outside it.

- The mount-namespace helper runs as root in the function's code dir with the function's environment:
  a `functions/mount_namespace.py` shipped in the code (or PYTHONPATH in its environment) once ran there
  as root. The worker itself is started with -P, so a `functions/` package in the code does not shadow
  the runtime either.
- A function's deployed versions are its own, read-only; the directory holding them stays root's, so the
  function cannot swap in a link for the next deployment (run as root) to chown or chmod through.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from functions.mount_namespace import VolumeMount
from functions.worker_process import WorkerProcess, WorkerSpec
from gateway.function_deploy import HOME_MODE, deploy_function
from tests.functions.test_volume_destinations import _unshare_refusal

UID = 4242
PLANTED = """
import os, sys
with open(os.environ["MARKER"], "a") as marker:
    marker.write(f"{__name__} ran as uid {os.geteuid()}\\n")
"""
HANDLER = "def function_handler(event, context):\n    return event\n"


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("spawning a worker under another uid and deploying for it need root")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory other uids can pass through (pytest's own tmp dirs are root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mgroot", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_code_planted_as_the_runtime_never_runs_as_root(as_root: None, open_tmp: Path) -> None:
    tmp_path = open_tmp
    refused = _unshare_refusal()
    if refused:
        pytest.skip(f"the kernel refuses unshare(CLONE_NEWNS) here: {refused}")
    code = tmp_path / "code"
    (code / "functions").mkdir(parents=True)
    (code / "functions" / "__init__.py").write_text(PLANTED)
    (code / "functions" / "mount_namespace.py").write_text(PLANTED)
    (code / "functions" / "worker.py").write_text(PLANTED)
    (code / "handler.py").write_text(HANDLER)
    planted_path = tmp_path / "elsewhere"
    (planted_path / "functions").mkdir(parents=True)
    (planted_path / "functions" / "__init__.py").write_text(PLANTED)
    (planted_path / "functions" / "mount_namespace.py").write_text(PLANTED)
    for path in [code, *code.rglob("*"), planted_path, *planted_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)
    marker = tmp_path / "marker.txt"
    marker.touch(mode=0o666)
    marker.chmod(0o666)
    environment = {"PATH": "/usr/bin:/bin", "MARKER": str(marker), "PYTHONPATH": str(planted_path)}
    mount = VolumeMount("data", str(volume), "/srv/millgate-test-data", False)
    spec = WorkerSpec("f", "1", code, "handler.function_handler", "t", UID, UID, [], 64, environment, (mount,))
    worker = WorkerProcess(spec, Lines())  # type: ignore[arg-type]

    async def start_and_stop() -> None:
        try:
            await worker.start()
        finally:
            await worker.kill()

    asyncio.run(start_and_stop())
    ran = marker.read_text()
    assert "ran as uid 0" not in ran, ran
    assert "mount_namespace" not in ran and "functions.worker" not in ran, ran


def _function(code: Path) -> SimpleNamespace:
    return SimpleNamespace(name="f", uid=UID, gid=UID)


def test_the_function_cannot_change_where_its_versions_live(as_root: None, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    functions_dir = tmp_path / "functions"
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (victim / "file").write_text("root's")
    for version in range(3):
        (source / "handler.py").write_text(HANDLER + f"# {version}\n")
        deployed = deploy_function(_function(source), source, functions_dir, as_root=True)  # type: ignore[arg-type]
        home = functions_dir / "f"
        info = home.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, HOME_MODE), "the home is root's"
        assert Path(deployed.path).stat().st_uid == UID, "the version is the function's"
        if version == 0:
            # what the function could do to a home it owned: leave links for root to follow
            os.symlink(victim, home / "zzz-old-version")
            os.symlink(victim, home / ".deploy-planted")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and victim.stat().st_uid == 0
    assert (victim / "file").stat().st_uid == 0 and (victim / "file").read_text() == "root's"


def test_the_same_code_under_a_new_run_as_is_deployed_anew_for_its_new_owner(as_root: None, tmp_path: Path) -> None:
    # it kept the version its old uid owned, so the function could not even enter its code directory
    source = tmp_path / "source"
    source.mkdir()
    (source / "handler.py").write_text(HANDLER)
    functions_dir = tmp_path / "functions"
    first = deploy_function(_function(source), source, functions_dir, as_root=True)  # type: ignore[arg-type]
    moved = SimpleNamespace(name="f", uid=UID + 1, gid=UID + 1)
    second = deploy_function(moved, source, functions_dir, as_root=True)  # type: ignore[arg-type]
    assert second.version == first.version
    for path in [Path(second.path), *Path(second.path).rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (UID + 1, UID + 1), path
