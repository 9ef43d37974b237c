"""Core OTA, run by the detached package job: install a verified .deb with [deployment]
ota_install_command, restart the service with ota_restart_command, wait for a core that started after
the restart to report online running the package's version, and put the previous package (kept under
<state>/packages) back when none does within ota_health_timeout_s.

It decides and runs commands; fetching and checksums are gateway/deploy_job.py's.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.atomic_file import write_atomic
from gateway.config import DeploymentSection
from gateway.config_loader import load_config
from gateway.deploy_job import JobRefused, Request, fetch_verified
from gateway.package_version import PackageUnreadable, deb_version, same_release
from gateway.paths import GatewayPaths

# here, not where it is used: that runs after the new package replaced millgate's files, and this job
# (the old code) must not import the new version's modules among its own already loaded
from gateway.status import read_component_status

log = logging.getLogger(__name__)

PACKAGES = "packages"
CURRENT_DEB = "current.deb"  # the package last installed by OTA: what a failed update goes back to
CURRENT_INFO = "current.json"
INCOMING_DEB = "incoming.deb"
COMMAND_TIMEOUT_S = 600.0
POLL_S = 0.5
DEB_MAGIC = b"!<arch>\ndebian-binary"


@dataclass(frozen=True)
class Kept:
    deb: Path
    version: str


def packages_dir(state_dir: Path) -> Path:
    return state_dir / PACKAGES


def kept_package(state_dir: Path) -> Kept | None:
    directory = packages_dir(state_dir)
    try:
        info = json.loads((directory / CURRENT_INFO).read_text())
    except (OSError, ValueError):
        return None
    deb = directory / CURRENT_DEB
    return Kept(deb, str(info.get("version", "?"))) if deb.is_file() else None


def _command(template: str, deb: Path | None = None) -> list[str]:
    return [part.replace("{deb}", str(deb)) for part in shlex.split(template)]


def _run(what: str, argv: list[str], cwd: Path | None = None) -> str | None:
    """None when the command succeeded; otherwise why not (its last line of output)."""
    log.info("event=ota-%s command=%s", what, shlex.join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{what} ({shlex.join(argv)}): {exc}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"{what} ({shlex.join(argv)}) exited {done.returncode}: {lines[-1] if lines else 'no output'}"
    return None


def fresh_core_problem(paths: GatewayPaths, since: float, expected: str | None) -> str | None:
    """None when the core heartbeat is online from a process started after `since` and running the
    package version `expected` (when given), else what is missing. A core that reports no version
    predates the check and is taken as it is."""
    beats, error = read_component_status(paths)
    if error is not None:
        return f"broker: {error}"
    core = beats.get("core")
    if core is None:
        return "no core heartbeat"
    if float(core.get("started_at", 0)) < since:
        return "the core running is the one from before the restart"
    if core.get("state") != "online":
        return f"core: {core.get('state')}"
    running = core.get("version")
    if expected is not None and running is not None and not same_release(expected, str(running)):
        return f"the restarted core runs millgate {running}, not the package's {expected}"
    return None


def wait_restarted(paths: GatewayPaths, settings: DeploymentSection, expected: str | None) -> str | None:
    """Restart the service and wait for it to run version `expected` (any, when None); None when it
    came back healthy, else why not."""
    since = time.time()
    failed = _run("restart", _command(settings.ota_restart_command))
    if failed is not None:
        return failed
    deadline = time.monotonic() + settings.ota_health_timeout_s
    problem = fresh_core_problem(paths, since, expected)
    while problem is not None:
        if time.monotonic() > deadline:
            return f"not healthy within {settings.ota_health_timeout_s:g} s after the restart: {problem}"
        time.sleep(POLL_S)
        problem = fresh_core_problem(paths, since, expected)
    return None


def _rollback(previous: Kept, paths: GatewayPaths, settings: DeploymentSection) -> str | None:
    """Reinstall the kept package and wait for it; a kept file whose version cannot be read (kept by a
    millgate from before versions were checked) is waited for as any fresh core."""
    try:
        expected: str | None = deb_version(previous.deb)
    except PackageUnreadable as exc:
        log.warning("event=ota-rollback-version-unknown reason=%s", exc)
        expected = None
    failed = _run("install", _command(settings.ota_install_command, previous.deb))
    return failed or wait_restarted(paths, settings, expected)


def _keep(state_dir: Path, incoming: Path, request: Request, version: str) -> None:
    directory = packages_dir(state_dir)
    current = directory / CURRENT_DEB
    if current.exists():
        current.replace(directory / "previous.deb")
    incoming.replace(current)
    info = {"version": version, "sha256": request.sha256}
    write_atomic(directory / CURRENT_INFO, json.dumps(info), 0o600)


def _package_version(incoming: Path, request: Request) -> str:
    """The fetched file's own Version, which must be the one the request names; raises JobRefused."""
    where = f"s3://{request.bucket}/{request.key}"
    with incoming.open("rb") as deb:
        if deb.read(len(DEB_MAGIC)) != DEB_MAGIC:
            raise JobRefused(f"{where}: not a Debian package")
    try:
        version = deb_version(incoming)
    except PackageUnreadable as exc:
        raise JobRefused(f"{where}: {exc}") from exc
    if version != request.version and not same_release(version, request.version):
        raise JobRefused(f"{where} is millgate {version}, not the requested version {request.version}")
    return version


def run_package_job(request: Request, config_dir: Path, state_dir: Path) -> tuple[str, str]:
    """Fetch, verify, install and check one package, rolling back when needed; (result, reason)."""
    running = load_config(config_dir)
    paths = GatewayPaths.resolve(config_dir, state_dir, running.gateway.gateway.log_dir)
    settings = running.gateway.deployment
    directory = packages_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    incoming = directory / INCOMING_DEB
    try:
        fetch_verified(request, incoming, settings)
        version = _package_version(incoming, request)
    except JobRefused as exc:
        incoming.unlink(missing_ok=True)
        return "refused", str(exc)
    previous = kept_package(state_dir) or _keep_installed_now(state_dir, settings)
    failed = _run("install", _command(settings.ota_install_command, incoming))
    if failed is not None:
        incoming.unlink(missing_ok=True)
        reason = _after_failed_install(failed, previous, directory, settings)
        log.error("event=ota-install-failed version=%s reason=%s", request.version, reason)
        return "failed", reason
    try:
        problem = wait_restarted(paths, settings, version)
    except Exception as exc:  # whatever went wrong after the install, the previous package goes back
        log.exception("event=ota-health-check-crashed version=%s", request.version)
        problem = f"the health check after the install failed: {exc!r}"
    if problem is None:
        _keep(state_dir, incoming, request, version)
        return "ok", f"package {version} installed; the restarted gateway runs it and is healthy"
    log.error("event=ota-unhealthy version=%s reason=%s", request.version, problem)
    if previous is None:
        return "failed", f"{problem}; no previous package kept under {directory} to roll back to"
    rollback = _rollback(previous, paths, settings)
    incoming.unlink(missing_ok=True)
    if rollback is not None:
        return "rollback-failed", f"{problem}; rolling back to package {previous.version} failed: {rollback}"
    return "rolled-back", f"{problem}; rolled back to package {previous.version}"


def _after_failed_install(failed: str, previous: Kept | None, directory: Path, settings: DeploymentSection) -> str:
    """Why a failed install changed nothing that runs. The service was not restarted, so the old package
    still runs; a dpkg that stopped half-way may have unpacked new files, so the kept package's files
    are installed again (without a restart) when there is one."""
    if previous is None:
        return (
            f"{failed}; nothing was restarted, the installed package still runs (no previous package kept "
            f"under {directory} to reinstall its files: `dpkg --audit` shows a half-installed one)"
        )
    unchanged = f"{failed}; nothing was restarted, package {previous.version} still runs"
    again = _run("reinstall", _command(settings.ota_install_command, previous.deb))
    if again is not None:
        return f"{unchanged}; reinstalling its files failed: {again}"
    return f"{unchanged} and its files were reinstalled"


def _keep_installed_now(state_dir: Path, settings: DeploymentSection) -> Kept | None:
    """The installed package rebuilt from its files by `ota_keep_command` (run in a scratch directory,
    where it leaves <name>_<version>_<arch>.deb) and kept to roll back to; None, logged, when it cannot."""
    work = Path(tempfile.mkdtemp(prefix="keep-", dir=packages_dir(state_dir)))
    try:
        failed = _run("keep", _command(settings.ota_keep_command), cwd=work)
        built = sorted(work.glob("*.deb"))
        if failed is None and len(built) != 1:
            failed = f"keep ({settings.ota_keep_command}) left {len(built)} .deb files, not one"
        if failed is not None:
            log.warning("event=ota-no-rollback-package reason=%s", failed)
            return None
        try:
            version = deb_version(built[0])
        except PackageUnreadable as exc:
            log.warning("event=ota-no-rollback-package reason=%s", exc)
            return None
        keep_installed(state_dir, built[0], version)
        return kept_package(state_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keep_installed(state_dir: Path, deb: Path, version: str) -> None:
    """Record `deb` as the package installed now (what a first OTA rolls back to)."""
    directory = packages_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(deb, directory / CURRENT_DEB)
    write_atomic(directory / CURRENT_INFO, json.dumps({"version": version}), 0o600)
