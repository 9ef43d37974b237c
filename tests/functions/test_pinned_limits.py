"""A long-lived function's memory cgroup on a real gateway: the runner puts itself in a group whose limit
is the function's memory_mb plus the runtime's headroom, and a dead runner's group is removed by the next
placement (the restarted runner's; once it has dropped root a runner cannot remove its own) (issue 4 item 5,
"memory limit (cgroup v2 where writable, RLIMIT_AS otherwise)"), as an on-demand worker's is
(tests/functions/test_limits.py).

Where this machine offers no cgroup memory controller millgate may write, or the kernel refuses one,
the test is skipped with the reason the runner logged.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import uuid
from pathlib import Path

import pytest

from functions.limits import MIB, RUNTIME_HEADROOM_MB, cgroup_kind, cgroup_path, mechanism_description
from tests.fixtures.gateway import start_gateway, wait_until
from tests.functions.test_runtime import invoke

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and other uids need root")

MEMORY_MB = 96

GATEWAY = f"""
[gateway]
thing_name = "pinned-limits-test"
status_interval_s = 0.5

[[functions]]
name = "capped"
code = "functions/capped"
handler = "capped.function_handler"
lifecycle = "long-lived"
run_as = "1031:1031"
memory_mb = {MEMORY_MB}
"""

CAPPED = """
import os

def function_handler(event, context):
    return {"pid": os.getpid()}
"""


def test_long_lived_function_cgroup_has_its_memory_mb_and_is_removed_after_it_died() -> None:
    kind = cgroup_kind()
    if kind == "none":
        pytest.skip(f"no cgroup memory controller millgate may write here: {mechanism_description()[1]}")
    base = Path("/tmp") / f"mgpinlim{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o755)
    config = base / "etc"
    (config / "functions" / "capped").mkdir(parents=True)
    (config / "functions" / "capped" / "capped.py").write_text(CAPPED)
    (config / "gateway.toml").write_text(GATEWAY)
    gw = start_gateway(config, base / "s", expect=("broker", "core", "fn-capped"))
    try:
        answer = invoke(gw, "capped", {})
        assert answer["function_error"] is None, answer
        pid = answer["result"]["pid"]
        path = cgroup_path(f"fn-capped-{pid}")
        if path is None:
            logged = "\n".join(p.read_text(errors="replace") for p in gw.paths.log_dir.rglob("fn-capped*.log"))
            refusal = re.search(r"event=memory-limit mechanism=RLIMIT_AS reason=(.*)", logged)
            if refusal:
                pytest.skip(f"the kernel refused a cgroup {kind}: {refusal.group(1)}")
            raise AssertionError(f"no cgroup fn-capped-{pid} and no logged fallback:\n{logged}")
        limit_file = "memory.max" if kind == "v2" else "memory.limit_in_bytes"
        assert int((path / limit_file).read_text()) == (MEMORY_MB + RUNTIME_HEADROOM_MB) * MIB
        assert str(pid) in (path / "cgroup.procs").read_text().split()
        os.kill(pid, signal.SIGKILL)  # supervisord restarts it; the new runner's placement sweeps the old group
        wait_until(lambda: invoke(gw, "capped", {})["result"]["pid"] != pid, 20, "the restarted runner")
        new_pid = invoke(gw, "capped", {})["result"]["pid"]
        assert cgroup_path(f"fn-capped-{new_pid}") is not None
        wait_until(lambda: not path.exists(), 5, f"{path} to be removed after its runner died")
    finally:
        gw.stop()
        gw.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)
