"""Shared preload (gateway/preload.py): system components run forked from a supervisord that has
their modules loaded, so those pages are shared; functions (user code) are exec'd as before, from a
runner spec rather than the config models; a code update on disk makes later starts exec again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gateway import preload
from gateway.status import supervisor_proxy
from tests.fixtures.gateway import wait_until

FUNCTION_GATEWAY = """
[gateway]
thing_name = "preload-gw"
status_interval_s = 0.5

[[functions]]
name = "pinned"
code = "functions/pinned"
handler = "main.function_handler"
lifecycle = "long-lived"
run_as = "1001:1001"
"""

PINNED = "def function_handler(event, context):\n    return None\n"


def _rollup(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_components_share_supervisords_pages_and_keep_their_command_line(gateway_factory) -> None:
    gw = gateway_factory(FUNCTION_GATEWAY, files={"functions/pinned/main.py": PINNED}, expect=("broker", "core"))
    wait_until(lambda: gw.status()["processes"].get("fn-pinned", {}).get("state") == "RUNNING", 20, "fn-pinned")
    processes = gw.status()["processes"]
    core, pinned = processes["core"]["pid"], processes["fn-pinned"]["pid"]
    preloaded = supervisor_proxy(gw.paths).preload.getPreloaded()
    assert preloaded["modules"] == ["gateway.core"] and preloaded["failed"] == {}, preloaded
    # the deployment's config snapshot, validated once in supervisord
    assert preloaded["config"] == str((gw.state_dir / "deployments/current/config").resolve())
    # `ps` shows the component's own command, not supervisord's
    assert _cmdline(core).startswith(f"{sys.executable} -m gateway.core --config ")
    # forked in place: most of its memory is pages it shares with supervisord ...
    assert _rollup(core)["Shared_Dirty"] > 10 * 1024
    # ... while a function, running user code, is exec'd and shares no supervisord memory
    assert _rollup(pinned)["Shared_Dirty"] < 1024
    assert _cmdline(pinned).startswith(f"{sys.executable} -m functions.pinned ")
    # and it starts from the runner spec `millgate run` wrote, without loading the config models
    assert "_pydantic_core" not in Path(f"/proc/{pinned}/maps").read_text()
    spec = gw.paths.generated_dir / "functions" / "pinned.json"
    assert spec.stat().st_mode & 0o777 == 0o600


def test_only_system_components_run_in_place() -> None:
    python = sys.executable
    assert preload.component_module([python, "-m", "gateway.core", "--config", "c"]) == "gateway.core"
    assert preload.component_module([python, "-m", "adapters.opcua", "--name", "line2"]) == "adapters.opcua"
    assert preload.component_module([python, "-m", "functions.pinned", "--name", "f"]) is None
    assert preload.component_module(["/usr/sbin/mosquitto", "-c", "m.conf"]) is None


def test_a_code_update_on_disk_makes_components_exec_again(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    stale = tuple((0, 0) for _ in preload.SYSTEM_COMPONENTS)  # what a replaced package looks like
    execve = preload.forking_execve(lambda filename, argv, env: calls.append(argv), stale)
    argv = [sys.executable, "-m", "gateway.core", "--config", str(tmp_path)]
    execve(sys.executable, argv, dict(os.environ))
    assert calls == [argv]  # handed to the real execve, not run in this process
