"""A deployment that goes wrong in an unplanned way still ends in a known state: rolled back and
recorded after a render error or Ctrl-C, with the last good snapshot kept however many failures
came after it; and `millgate` says what went wrong in one line, not a traceback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.gateway import REPO, RunningGateway, run_cli, wait_until

GATEWAY = """
[gateway]
thing_name = "recover-gw"
status_interval_s = 0.5

[deployment]
health_timeout_s = 15
settle_s = 1.0
keep = 2

[[functions]]
name = "pinned"
code = "functions/pinned"
handler = "main.function_handler"
lifecycle = "long-lived"
run_as = "1001:1001"
"""
GOOD = "VERSION = 1\n\ndef function_handler(event, context):\n    return VERSION\n"
BROKEN = "raise ImportError('this deployment is broken on purpose')\n"
PROGRAMS = ("broker", "core", "fn-pinned")
NEW_FUNCTION = """
[[functions]]
name = "newfn"
code = "functions/pinned"
handler = "main.function_handler"
lifecycle = "long-lived"
run_as = "1002:1002"
"""


def _ready(gw: RunningGateway) -> bool:
    status = gw.status()
    beat = status["components"].get("fn-pinned", {})
    return beat.get("pid") == status["processes"]["fn-pinned"]["pid"] and beat.get("function_state") == "ready"


def _start(gateway_factory) -> RunningGateway:
    gw = gateway_factory(GATEWAY, files={"functions/pinned/main.py": GOOD}, expect=PROGRAMS)
    wait_until(lambda: _ready(gw), 15, "fn-pinned ready")
    return gw


def _history(gw: RunningGateway) -> list[dict]:
    return json.loads(gw.cli("deploy", "--history", "--json").stdout)


def _current(gw: RunningGateway) -> str:
    return str((gw.state_dir / "deployments/current").readlink())


def test_the_last_good_snapshot_outlives_more_failed_deployments_than_keep(gateway_factory) -> None:
    gw = _start(gateway_factory)
    (gw.config_dir / "functions/pinned/main.py").write_text(BROKEN)
    for attempt in range(3):  # keep = 2
        result = gw.cli("deploy", timeout=90)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "rolled back to deployment 1" in result.stderr, (attempt, result.stderr)
        assert _current(gw) == "1"
    assert (gw.state_dir / "deployments/1/config/gateway.toml").is_file()
    assert len([p for p in (gw.state_dir / "deployments").iterdir() if p.name.isdigit()]) <= 3
    wait_until(lambda: _ready(gw), 10, "the good fn-pinned running again")
    assert [e["result"] for e in _history(gw)] == ["running", "rolled-back", "rolled-back", "rolled-back"]


def test_a_render_error_rolls_back_and_is_recorded(gateway_factory) -> None:
    gw = _start(gateway_factory)
    before = {name: p["pid"] for name, p in gw.status()["processes"].items()}
    # something in the way of the new function's secret: render cannot write it
    blocker = gw.paths.credentials_dir / "function.newfn.json"
    blocker.mkdir()
    toml = gw.config_dir / "gateway.toml"
    toml.write_text(toml.read_text() + NEW_FUNCTION)
    result = gw.cli("deploy", timeout=90)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "rolled-back" in result.stderr and "IsADirectoryError" in result.stderr, result.stderr
    assert "rolled back to deployment 1" in result.stderr
    assert _current(gw) == "1"
    last = _history(gw)[-1]
    assert last["result"] == "rolled-back" and "function.newfn.json" in last["message"], last
    assert {name: p["pid"] for name, p in gw.status()["processes"].items()} == before
    assert _ready(gw)


def test_ctrl_c_while_waiting_for_health_rolls_back_and_is_recorded(gateway_factory) -> None:
    gw = _start(gateway_factory)
    toml = gw.config_dir / "gateway.toml"
    # the new deployment settles for long enough to be interrupted while its health is awaited
    toml.write_text(toml.read_text().replace("settle_s = 1.0", "settle_s = 60"))
    (gw.config_dir / "functions/pinned/main.py").write_text(GOOD.replace("VERSION = 1", "VERSION = 2"))
    argv = [str(Path(sys.executable).parent / "millgate"), "deploy", "--config", str(gw.config_dir)]
    deploying = subprocess.Popen(
        [*argv, "--state", str(gw.state_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        wait_until(lambda: _current(gw) == "2" and _ready(gw), 20, "the new fn-pinned up and its health awaited")
        deploying.send_signal(signal.SIGINT)
        stdout, stderr = deploying.communicate(timeout=60)
    finally:
        if deploying.poll() is None:
            deploying.kill()
    assert deploying.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "rolled back to deployment 1" in stderr, stderr
    assert _current(gw) == "1"
    assert _history(gw)[-1]["result"] == "rolled-back"
    wait_until(lambda: _ready(gw), 10, "the previous fn-pinned running again")
    time.sleep(0.5)
    assert "VERSION = 1" in (gw.state_dir / "deployments/current/config/functions/pinned/main.py").read_text()


def test_millgate_run_reports_an_unexpected_error_in_one_line(short_tmp: Path) -> None:
    config = short_tmp / "etc"
    (config / "functions/pinned").mkdir(parents=True)
    (config / "functions/pinned/main.py").write_text(GOOD)
    (config / "gateway.toml").write_text(GATEWAY)
    state = short_tmp / "s"
    (state / "credentials").mkdir(parents=True)
    (state / "credentials/function.pinned.json").mkdir()
    result = run_cli("run", config=config, state=state)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("millgate run:")]
    assert len(lines) == 1, result.stderr
    assert "unexpected IsADirectoryError" in lines[0] and "function.pinned.json" in lines[0], lines
