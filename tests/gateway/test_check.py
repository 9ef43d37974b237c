"""`millgate check` on this machine: one line per check, the config first (an invalid one fails, with its
first problem), state and log dirs judged by where they can be created, required failures exit 1 and
optional ones (cgroup v2) only warn.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from functions.limits import cgroup_kind
from gateway.check import CheckResult, check_component_uids, render_checks
from gateway.cli import main
from tests.fixtures.gateway import run_cli

CHECK_NAMES = (
    "config",
    "kernel >= 4.4",
    "cpu architecture",
    "ram >= 128 MB",
    "python >= 3.11",
    "mosquitto >= 2.0",
    "supervisord >= 4.2.5",
    "memory limits",
    "service user millgate",
    "component uids",
    "state dir",
    "log dir",
)
STATUSES = ("PASS", "FAIL", "WARN")
NOBODY = 65534


@pytest.fixture
def config_dir(short_tmp: Path) -> Path:
    config = short_tmp / "etc"
    config.mkdir()
    (config / "gateway.toml").write_text('[gateway]\nthing_name = "t"\n')
    return config


def run_check(config: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", "--config", str(config), "--state", str(state)])
    return code, capsys.readouterr().out.splitlines()


def line_for(lines: list[str], name: str) -> str:
    [line] = [line for line in lines[:-1] if line[len("PASS  ") :].startswith(name + " ")]
    return line


def assert_one_line_per_check(lines: list[str]) -> None:
    assert len(lines) == len(CHECK_NAMES) + 1, lines
    for name in CHECK_NAMES:
        assert line_for(lines, name)[:4] in STATUSES
    assert "passed" in lines[-1] and "failed" in lines[-1]


def assert_exit_matches_fail_lines(code: int, lines: list[str]) -> None:
    failed = [line for line in lines if line.startswith("FAIL")]
    assert code == (1 if failed else 0), lines


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "to-be-created"])
def test_check_passes_writable_state_and_log_dirs(
    config_dir: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str], exists: bool
) -> None:
    state = short_tmp / "state"
    if exists:
        state.mkdir()

    code, lines = run_check(config_dir, state, capsys)

    assert_one_line_per_check(lines)
    assert line_for(lines, "state dir").startswith(f"PASS  state dir              {state}")
    assert line_for(lines, "log dir").startswith(f"PASS  log dir                {state / 'log'}")
    assert_exit_matches_fail_lines(code, lines)
    assert state.exists() == exists, "check must only look, never create"


def test_check_fails_state_dir_below_a_regular_file(
    config_dir: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = short_tmp / "plain-file"
    blocker.write_text("not a directory\n")
    state = blocker / "state"

    code, lines = run_check(config_dir, state, capsys)

    assert code == 1
    assert_one_line_per_check(lines)
    line = line_for(lines, "state dir")
    assert line.startswith("FAIL")
    assert f"{state} cannot be created: {blocker} is not a directory" in line
    assert f"-> fix: remove or rename {blocker}, or use another directory (--state DIR" in line
    assert line_for(lines, "log dir").startswith("FAIL")


def test_check_fails_state_dir_too_long_for_unix_sockets(
    config_dir: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = short_tmp / ("s" * 100)

    code, lines = run_check(config_dir, state, capsys)

    assert code == 1
    line = line_for(lines, "state dir")
    assert line.startswith("FAIL") and "unix socket" in line and "-> fix: use a shorter state dir" in line


def test_check_exit_code_counts_only_required_failures(
    config_dir: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run_check(config_dir, short_tmp / "state", capsys)

    assert_exit_matches_fail_lines(code, lines)
    memory = line_for(lines, "memory limits")
    kind = cgroup_kind()  # what the function runtime will use on this machine
    if kind == "none":
        assert memory.startswith("WARN") and "RLIMIT_AS" in memory and "-> fix: " in memory
    else:
        assert memory.startswith("PASS") and f" cgroup {kind}: memory controller" in memory, memory
    user = line_for(lines, "service user millgate")
    if user.startswith("PASS"):
        return
    # the millgate account matters only to a root gateway; a dev checkout runs as its invoking user
    assert user.startswith("FAIL" if os.geteuid() == 0 else "WARN"), user
    assert "-> fix: useradd --system" in user or "-> fix: groupadd --system" in user


def _run_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    millgate = str(Path(sys.executable).parent / "millgate")
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", millgate, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")


@pytest.fixture
def as_nobody() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the console script as an unprivileged user")
    if _run_as_nobody("--help").returncode != 0:
        pytest.skip("the millgate console script cannot run as nobody here")


@pytest.mark.usefixtures("as_nobody")
def test_unprivileged_check_warns_about_service_user_but_can_pass(config_dir: Path, short_tmp: Path) -> None:
    os.chown(short_tmp, NOBODY, NOBODY)
    state = short_tmp / "state"

    result = _run_as_nobody("check", "--config", str(config_dir), "--state", str(state))

    lines = result.stdout.splitlines()
    assert_one_line_per_check(lines)
    assert not line_for(lines, "service user millgate").startswith("FAIL")
    assert line_for(lines, "state dir").startswith("PASS")
    assert_exit_matches_fail_lines(result.returncode, lines)


@pytest.mark.usefixtures("as_nobody")
def test_unprivileged_check_fails_state_dir_it_cannot_create(config_dir: Path, short_tmp: Path) -> None:
    short_tmp.chmod(0o755)
    state = short_tmp / "state"

    result = _run_as_nobody("check", "--config", str(config_dir), "--state", str(state))

    assert result.returncode == 1
    line = line_for(result.stdout.splitlines(), "state dir")
    assert f"FAIL  state dir              {state} cannot be created: {short_tmp} is not writable by nobody" in line
    assert f"-> fix: as root: mkdir -p {state} && chown nobody {state}" in line


def test_console_script_prints_the_same_checks(config_dir: Path, short_tmp: Path) -> None:
    state = short_tmp / "state"

    result = run_cli("check", config=config_dir, state=state)

    lines = result.stdout.splitlines()
    assert_one_line_per_check(lines)
    assert line_for(lines, "state dir").startswith("PASS")
    assert_exit_matches_fail_lines(result.returncode, lines)
    assert result.stderr == ""


def test_an_invalid_config_fails_the_check_with_its_first_problem(
    config_dir: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (config_dir / "gateway.toml").write_text(
        '[gateway]\nthing_name = "t"\ncomponent_uids = "70000-70099"\ncolour = 1\n'
    )
    code, lines = run_check(config_dir, short_tmp / "state", capsys)
    assert code == 1
    assert_one_line_per_check(lines)
    line = line_for(lines, "config")
    assert line.startswith("FAIL") and "1 problem, the first: " in line and "colour: unknown key" in line, line
    assert f"-> fix: millgate config validate --config {config_dir}" in line
    # the uid range it checks is the default one, and the config line says why
    assert "the default" in line_for(lines, "component uids")


def test_a_valid_config_passes_with_what_it_holds(
    config_dir: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _code, lines = run_check(config_dir, short_tmp / "state", capsys)
    assert line_for(lines, "config") == f"PASS  config                 {config_dir}: 0 functions, 0 adapters"


def test_render_aligns_names_and_marks_pass_fail_warn() -> None:
    results = [
        CheckResult("kernel >= 4.4", True, True, "6.18.44", ""),
        CheckResult("mosquitto >= 2.0", False, True, "not installed", "apt-get install mosquitto"),
        CheckResult("cgroup v2", False, False, "cgroup v1", "boot with cgroup v2"),
        CheckResult("state dir", False, True, "first\nsecond", "mkdir it"),
    ]

    assert render_checks(results).splitlines() == [
        "PASS  kernel >= 4.4     6.18.44",
        "FAIL  mosquitto >= 2.0  not installed  -> fix: apt-get install mosquitto",
        "WARN  cgroup v2         cgroup v1  -> fix: boot with cgroup v2",
        "FAIL  state dir         first second  -> fix: mkdir it",
        "1 passed, 2 failed, 1 warned: fix every FAIL before `millgate run`",
    ]


def test_render_summary_says_the_machine_is_ready_when_only_warnings() -> None:
    results = [
        CheckResult("kernel >= 4.4", True, True, "6.18.44", ""),
        CheckResult("cgroup v2", False, False, "cgroup v1", "boot with cgroup v2"),
    ]

    assert render_checks(results).splitlines()[-1] == "1 passed, 0 failed, 1 warned: this machine can run millgate"


def test_component_uids_that_an_account_has_fail_the_check() -> None:
    result = check_component_uids(range(65530, 65536), "[gateway] component_uids")
    assert not result.passed and result.required
    assert "65534 nobody" in result.detail and result.fix.startswith("set [gateway] component_uids")


def test_check_passes_the_default_component_uids_when_no_account_has_them(
    config_dir: Path, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines = run_check(config_dir, short_tmp / "state", capsys)
    line = line_for(lines, "component uids")
    assert line.startswith("PASS") and "60100-60199 ([gateway] component_uids): no account uses them" in line
