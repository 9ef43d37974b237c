"""A worker's memory cgroup on this machine: its limit is the configured one plus the runtime's headroom
(as RLIMIT_AS gives) and it is removed when the worker stops (issue 4, "memory limit (cgroup v2 where
writable, RLIMIT_AS otherwise)").

Where the kernel refuses a cgroup (a container that may not enable controllers, no memory controller),
the test is skipped with the kernel's own refusal as the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.limits import MIB, RUNTIME_HEADROOM_MB, cgroup_kind, cgroup_path, fallback_reason, mechanism_description
from functions.user_log import UserLog
from functions.worker_process import WorkerProcess, WorkerSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and other uids need root")

MEMORY_MB = 96
UID = 1301


@pytest.fixture
def code_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mglimits"))
    base.chmod(0o755)  # the worker's uid reads its code
    (base / "probe.py").write_text("import os\n\ndef handler(event, context):\n    return {'pid': os.getpid()}\n")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _spec(code: Path) -> WorkerSpec:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(code), "PYTHONUNBUFFERED": "1"}
    if "VIRTUAL_ENV" in os.environ:
        environment["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
    return WorkerSpec("limits-probe", "1", code, "probe.handler", "t", UID, UID, [], MEMORY_MB, environment)


def test_worker_cgroup_has_the_configured_limit_and_is_removed_when_it_stops(code_dir: Path) -> None:
    kind = cgroup_kind()
    if kind == "none":
        pytest.skip(f"no cgroup memory controller millgate may write here: {mechanism_description()[1]}")
    worker = WorkerProcess(_spec(code_dir), UserLog(code_dir / "log" / "probe.log", 1 << 20))

    async def scenario() -> tuple[str | None, Path | None, str, str, object, bool]:
        await worker.start()
        try:
            group = worker.cgroup
            path = cgroup_path(group) if group else None
            limit_file = "memory.max" if kind == "v2" else "memory.limit_in_bytes"
            limit = (path / limit_file).read_text().strip() if path else ""
            procs = (path / "cgroup.procs").read_text() if path else ""
            answer = await worker.invoke("r1", "probe/in", b"{}", 10)
        finally:
            await worker.stop()
        return group, path, limit, procs, answer, bool(path and path.exists())

    group, path, limit, procs, answer, still_there = asyncio.run(scenario())
    if group is None:
        pytest.skip(f"the kernel refused a cgroup {kind}: {fallback_reason()}")
    assert path is not None
    assert int(limit) == (MEMORY_MB + RUNTIME_HEADROOM_MB) * MIB  # the runtime's headroom, as under RLIMIT_AS
    assert str(answer["result"]["pid"]) in procs.split()  # type: ignore[index]
    assert not still_there, f"{path} left behind after the worker stopped"
