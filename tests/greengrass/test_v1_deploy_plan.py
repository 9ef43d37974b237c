"""What a deployment restarts for a long-lived Greengrass v1 function (gateway/deploy_plan.py): a change
to its code, timeout or queue size restarts only fn-<name> (the core follows its restarted worker,
tests/greengrass/test_v1_long_lived.py); what the core itself holds of it (the function being there,
its port, its ARN, its deployment problems, its routes) restarts the core too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config_loader import load_config
from gateway.deploy_plan import fingerprints
from gateway.function_deploy import DeployedFunction

FUNCTION = """
[[functions]]
name = "Ticker"
code = "functions/Ticker"
handler = "Ticker.function_handler"
lifecycle = "long-lived"
runtime = "greengrass-v1"
run_as = "1041:1041"
{extra}
"""

ROUTE = """
[[subscriptions]]
source = "device:tester"
target = "function:Ticker"
topic = "gg/ticker/in"
"""


def _fingerprints(
    tmp_path: Path,
    extra: str = "",
    route: bool = False,
    present: bool = True,
    version: str = "v1",
    problems: tuple[str, ...] = (),
) -> dict[str, str]:
    config = tmp_path / "etc"
    (config / "functions" / "Ticker").mkdir(parents=True, exist_ok=True)
    (config / "functions" / "Ticker" / "Ticker.py").write_text("def function_handler(event, context):\n    pass\n")
    function = FUNCTION.format(extra=extra) if present else ""
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "gw"\n' + function + (ROUTE if route else ""))
    deployed = {"Ticker": DeployedFunction("Ticker", version, "/x", problems=list(problems))} if present else {}
    return fingerprints(load_config(config), deployed, "")


def test_code_timeout_and_queue_changes_restart_only_the_function(tmp_path: Path) -> None:
    before = _fingerprints(tmp_path)
    for after in (_fingerprints(tmp_path, "timeout_s = 9\nqueue_size = 10"), _fingerprints(tmp_path, version="v2")):
        assert after["core"] == before["core"]
        assert after["fn-Ticker"] != before["fn-Ticker"]


@pytest.mark.parametrize(
    "change",
    [
        {"extra": "daemon_port = 8123"},
        {"extra": 'arn = "arn:aws:lambda:eu-west-1:123456789012:function:Other:3"'},
        {"route": True},
        {"problems": ("/dev/ttyX does not exist",)},
        {"present": False},
    ],
)
def test_what_the_core_holds_of_it_restarts_the_core(tmp_path: Path, change: dict[str, Any]) -> None:
    assert _fingerprints(tmp_path, **change)["core"] != _fingerprints(tmp_path)["core"]
