"""`millgate check`: whether this machine can run millgate from its config (the config itself, kernel, CPU,
RAM, Python, mosquitto, supervisord, cgroups, the service account, the component uids, state and log
dirs), each failure with the fix to apply.

It only looks: it creates, installs and changes nothing, and runs no program but `mosquitto -h`.
"""

from __future__ import annotations

import grp
import importlib.metadata
import importlib.util
import os
import platform
import pwd
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from functions.limits import mechanism_description
from gateway.broker_config import BrokerNotInstalled, mosquitto_binary
from gateway.config import GatewaySection
from gateway.config_loader import ConfigInvalid, LoadedConfig, load_config
from gateway.paths import UNIX_SOCKET_MAX, GatewayPaths
from gateway.service_user import SERVICE_USER

MIN_KERNEL = (4, 4)
ARCHES = ("armv7l", "aarch64", "x86_64")
MIN_RAM_MB = 128
MIN_PYTHON = (3, 11)
MIN_MOSQUITTO = (2, 0)
MIN_SUPERVISOR = (4, 2, 5)
MOSQUITTO_PROBE_TIMEOUT_S = 5.0
MEMINFO = Path("/proc/meminfo")
CGROUP2_CONTROLLERS = Path("/sys/fs/cgroup/cgroup.controllers")


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    required: bool
    detail: str
    fix: str  # empty when passed


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def _leading_version(text: str) -> tuple[int, ...] | None:
    """(6, 18, 44) from '6.18.44-fc-v769'; None when the text does not start with a number."""
    match = re.match(r"(\d+(?:\.\d+)*)", text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def check_kernel() -> CheckResult:
    name = f"kernel >= {_dotted(MIN_KERNEL)}"
    release = platform.release()
    version = _leading_version(release)
    if version is None:
        return CheckResult(name, False, True, f"cannot parse kernel release {release!r}", "run on Linux 4.4 or later")
    if version < MIN_KERNEL:
        return CheckResult(name, False, True, release, f"upgrade the kernel to {_dotted(MIN_KERNEL)} or later")
    return CheckResult(name, True, True, release, "")


def check_arch() -> CheckResult:
    name = "cpu architecture"
    machine = platform.machine()
    if machine not in ARCHES:
        return CheckResult(
            name, False, True, f"{machine or 'unknown'} is not supported", f"run on one of: {', '.join(ARCHES)}"
        )
    return CheckResult(name, True, True, machine, "")


def check_ram() -> CheckResult:
    name = f"ram >= {MIN_RAM_MB} MB"
    try:
        meminfo = MEMINFO.read_text()
    except OSError as exc:
        return CheckResult(name, False, True, f"{MEMINFO}: {exc.strerror}", f"mount procfs on /proc ({MEMINFO})")
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
    if match is None:
        return CheckResult(name, False, True, f"{MEMINFO}: no MemTotal line", f"mount procfs on /proc ({MEMINFO})")
    total_mb = int(match.group(1)) // 1024
    if total_mb < MIN_RAM_MB:
        return CheckResult(name, False, True, f"{total_mb} MB", f"use a gateway with at least {MIN_RAM_MB} MB of RAM")
    return CheckResult(name, True, True, f"{total_mb} MB", "")


def check_python() -> CheckResult:
    name = f"python >= {_dotted(MIN_PYTHON)}"
    version = platform.python_version()
    if sys.version_info < MIN_PYTHON:
        return CheckResult(
            name,
            False,
            True,
            f"{version} ({sys.executable})",
            f"install Python {_dotted(MIN_PYTHON)}+ (Debian 12: apt-get install python3) and reinstall millgate",
        )
    return CheckResult(name, True, True, version, "")


def check_mosquitto() -> CheckResult:
    name = f"mosquitto >= {_dotted(MIN_MOSQUITTO)}"
    install = "apt-get install mosquitto"
    try:
        binary = mosquitto_binary()
    except BrokerNotInstalled:
        return CheckResult(name, False, True, "not installed", install)
    try:
        # `mosquitto -h` prints its version and exits 3; only the text matters
        probe = subprocess.run(
            [str(binary), "-h"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=MOSQUITTO_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return CheckResult(
            name, False, True, f"{binary} -h did not answer in {MOSQUITTO_PROBE_TIMEOUT_S:g} s", f"reinstall: {install}"
        )
    except OSError as exc:
        return CheckResult(name, False, True, f"{binary}: {exc.strerror}", f"reinstall: {install}")
    match = re.search(r"mosquitto version (\d+(?:\.\d+)*)", probe.stdout + probe.stderr)
    if match is None:
        return CheckResult(name, False, True, f"{binary} -h printed no version", f"reinstall: {install}")
    version = tuple(int(part) for part in match.group(1).split("."))
    if version < MIN_MOSQUITTO:
        return CheckResult(
            name,
            False,
            True,
            f"{match.group(1)} at {binary}",
            f"{install} from a release that ships {_dotted(MIN_MOSQUITTO)} or later (Debian 12 ships 2.0.11)",
        )
    return CheckResult(name, True, True, f"{match.group(1)} at {binary}", "")


def check_supervisor() -> CheckResult:
    name = f"supervisord >= {_dotted(MIN_SUPERVISOR)}"
    install = f"{sys.executable} -m pip install 'supervisor>={_dotted(MIN_SUPERVISOR)}'"
    # supervisord is started as `python -m supervisor.supervisord`, so this interpreter must import it
    if importlib.util.find_spec("supervisor") is None:
        return CheckResult(name, False, True, f"supervisor package not importable by {sys.executable}", install)
    try:
        text = importlib.metadata.version("supervisor")
    except importlib.metadata.PackageNotFoundError:
        return CheckResult(name, False, True, "supervisor importable but not installed as a distribution", install)
    version = _leading_version(text)
    if version is None or version < MIN_SUPERVISOR:
        return CheckResult(name, False, True, text, install)
    return CheckResult(name, True, True, text, "")


def check_memory_limits() -> CheckResult:
    """Which mechanism caps a function worker's memory here (functions.limits decides the same way)."""
    name = "memory limits"
    mechanism, why = mechanism_description()
    if mechanism != "RLIMIT_AS":
        return CheckResult(name, True, False, f"{mechanism}: {why}", "")
    if os.geteuid() != 0:
        fix = "run the gateway as root (it then uses cgroups where the kernel has a memory controller)"
    elif CGROUP2_CONTROLLERS.exists():
        fix = "give this cgroup the memory controller (outside a container, or delegate it to the container)"
    else:
        fix = "for cgroup memory limits, boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line"
    return CheckResult(
        name, False, False, f"RLIMIT_AS: {why}; a worker's address space is capped instead (a looser limit)", fix
    )


def check_service_user() -> CheckResult:
    name = f"service user {SERVICE_USER}"
    as_root = os.geteuid() == 0
    try:
        user: pwd.struct_passwd | None = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        user = None
    try:
        group: grp.struct_group | None = grp.getgrnam(SERVICE_USER)
    except KeyError:
        group = None
    why = (
        "required: started as root, components drop to it"
        if as_root
        else f"not required: not root, components run as {pwd.getpwuid(os.geteuid()).pw_name} (dev checkout)"
    )
    if user is not None and group is not None:
        return CheckResult(name, True, as_root, f"uid {user.pw_uid} gid {group.gr_gid}; {why}", "")
    useradd = "useradd --system --no-create-home --home-dir /var/lib/millgate --shell /usr/sbin/nologin"
    if user is None and group is None:
        missing, fix = "user and group", f"{useradd} --user-group {SERVICE_USER}"
    elif user is None:
        missing, fix = "user", f"{useradd} --gid {SERVICE_USER} {SERVICE_USER}"
    else:
        missing, fix = "group", f"groupadd --system {SERVICE_USER} && usermod --gid {SERVICE_USER} {SERVICE_USER}"
    return CheckResult(name, False, as_root, f"no {missing} {SERVICE_USER}; {why}", fix)


def check_component_uids(uids: range, setting: str) -> CheckResult:
    """No account may have a uid the uplink, an adapter or logship would run as (gateway/component_users.py)."""
    name = "component uids"
    shown = f"{uids.start}-{uids.stop - 1}"
    taken = sorted((entry.pw_uid, entry.pw_name) for entry in pwd.getpwall() if entry.pw_uid in uids)
    if not taken:
        return CheckResult(name, True, True, f"{shown} ({setting}): no account uses them", "")
    accounts = ", ".join(f"{uid} {account}" for uid, account in taken[:5])
    return CheckResult(
        name,
        False,
        True,
        f"{shown} ({setting}) holds accounts: {accounts}; a component given one would own that account's files",
        "set [gateway] component_uids in gateway.toml to a range no account uses",
    )


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor)


def _unwritable(path: Path) -> str:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only filesystem"
    return f"{path} is not writable by {_whoami()}"


def _whoami() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def check_dir(name: str, path: Path, setting: str) -> CheckResult:
    """`path` is usable when it is a writable directory, or can be created below a writable one.

    `setting` is how an operator points millgate elsewhere, for the fix.
    """
    elsewhere = f"or use another directory ({setting})"
    existing = _nearest_existing(path)
    if existing == path:
        if not path.is_dir():
            return CheckResult(
                name, False, True, f"{path} exists and is not a directory", f"remove or rename {path}, {elsewhere}"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            return CheckResult(name, False, True, _unwritable(path), f"as root: chown {_whoami()} {path}; {elsewhere}")
        return CheckResult(name, True, True, f"{path} writable", "")
    if not existing.is_dir():
        return CheckResult(
            name,
            False,
            True,
            f"{path} cannot be created: {existing} is not a directory",
            f"remove or rename {existing}, {elsewhere}",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return CheckResult(
            name,
            False,
            True,
            f"{path} cannot be created: {_unwritable(existing)}",
            f"as root: mkdir -p {path} && chown {_whoami()} {path}; {elsewhere}",
        )
    return CheckResult(name, True, True, f"{path} will be created in {existing}", "")


def check_state_dir(paths: GatewayPaths) -> CheckResult:
    result = check_dir("state dir", paths.state_dir, "--state DIR or [gateway] state_dir in gateway.toml")
    too_long = paths.too_long_sockets()
    if result.passed and too_long:
        return CheckResult(
            result.name,
            False,
            True,
            f"{too_long[0]} is longer than the {UNIX_SOCKET_MAX} bytes a unix socket path allows",
            "use a shorter state dir (--state DIR or [gateway] state_dir in gateway.toml)",
        )
    return result


def check_log_dir(paths: GatewayPaths) -> CheckResult:
    return check_dir("log dir", paths.log_dir, "[gateway] log_dir in gateway.toml")


MACHINE_CHECKS: tuple[Callable[[], CheckResult], ...] = (
    check_kernel,
    check_arch,
    check_ram,
    check_python,
    check_mosquitto,
    check_supervisor,
    check_memory_limits,
    check_service_user,
)


def check_config(config_dir: Path) -> tuple[CheckResult, LoadedConfig | None]:
    """Whether the config `millgate run` would start from is valid, and the config if it is."""
    name = "config"
    try:
        loaded = load_config(config_dir, strict=True)
    except ConfigInvalid as exc:
        count = len(exc.problems)
        detail = f"{count} problem{'s' if count != 1 else ''}, the first: {exc.problems[0]}"
        return CheckResult(name, False, True, detail, f"millgate config validate --config {config_dir}"), None
    functions, adapters = len(loaded.gateway.functions), len(loaded.adapters)
    return CheckResult(name, True, True, f"{config_dir}: {functions} functions, {adapters} adapters", ""), loaded


def run_checks(paths: GatewayPaths, component_uids: str | None = None) -> list[CheckResult]:
    """Every check; `component_uids` as configured (None: the config does not load, the default)."""
    setting = "[gateway] component_uids" if component_uids else "the default"
    first, last = (component_uids or GatewaySection.model_fields["component_uids"].default).split("-")
    return [
        *(check() for check in MACHINE_CHECKS),
        check_component_uids(range(int(first), int(last) + 1), setting),
        check_state_dir(paths),
        check_log_dir(paths),
    ]


def _status(result: CheckResult) -> str:
    if result.passed:
        return "PASS"
    return "FAIL" if result.required else "WARN"


def render_checks(results: list[CheckResult]) -> str:
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for result in results:
        line = f"{_status(result)}  {result.name:<{width}}  {result.detail}"
        if not result.passed:
            line += f"  -> fix: {result.fix}"
        # one line per check, whatever an OS error message held
        lines.append(" ".join(line.splitlines()))
    failed = sum(1 for r in results if _status(r) == "FAIL")
    warned = sum(1 for r in results if _status(r) == "WARN")
    passed = len(results) - failed - warned
    verdict = "fix every FAIL before `millgate run`" if failed else "this machine can run millgate"
    lines.append(f"{passed} passed, {failed} failed, {warned} warned: {verdict}")
    return "\n".join(lines)
