"""The Debian package: built from this checkout by packaging/build-deb.sh, its contents, control data,
maintainer scripts and systemd unit checked; lintian and an install into a fresh Debian 12 root
(debootstrap) run under `make package-test` (marker `package`), being slow and needing a mirror.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.gateway import REPO

BUILD = REPO / "packaging" / "build-deb.sh"


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    out = Path(tempfile.mkdtemp(prefix="mgdeb", dir="/tmp"))
    result = subprocess.run([str(BUILD), str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    found = list(out.glob("millgate_*_*.deb"))
    assert len(found) == 1, found
    yield found[0]
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def unpacked(deb: Path) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mgdebx", dir="/tmp"))
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _field(control: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in control.splitlines() if line.startswith(f"{name}:"))


def test_deb_is_named_for_version_and_arch_and_depends_on_debian_packages(deb: Path, unpacked: Path) -> None:
    control = (unpacked / "DEBIAN/control").read_text()
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert deb.name == f"millgate_{_field(control, 'Version')}_{arch}.deb"
    depends = {d.strip().split(" ")[0] for d in _field(control, "Depends").split(",")}
    assert {"python3", "mosquitto", "acl", "adduser"} <= depends
    assert (unpacked / "DEBIAN/conffiles").read_text().split() == ["/etc/millgate/gateway.toml"]


def test_venv_under_opt_runs_on_debians_python_and_knows_nothing_of_the_build_machine(unpacked: Path) -> None:
    venv = unpacked / "opt/millgate"
    assert os.readlink(venv / "bin/python3") == "/usr/bin/python3"
    assert (venv / "bin/millgate").read_text().splitlines()[0] == "#!/opt/millgate/bin/python"
    assert os.readlink(unpacked / "usr/bin/millgate") == "/opt/millgate/bin/millgate"
    site = next((venv / "lib").glob("python3.*/site-packages"))
    for package in ("gateway", "functions", "adapters", "storage", "supervisor", "pydantic", "boto3", "pymodbus"):
        assert (site / package).is_dir(), package
    assert not list(venv.rglob("__pycache__")), "byte code is compiled by postinst, not shipped"
    leaked = subprocess.run(["grep", "-rlI", "millgate-deb.", str(venv)], capture_output=True, text=True).stdout
    assert leaked == "", f"files still naming the build dir: {leaked}"
    # the packaged application imports and answers on Debian's interpreter with only its venv
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); import gateway.cli"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr


def test_maintainer_scripts_create_the_account_and_dirs_and_purge_removes_them(unpacked: Path) -> None:
    scripts = {name: (unpacked / "DEBIAN" / name) for name in ("postinst", "prerm", "postrm")}
    for name, path in scripts.items():
        assert os.access(path, os.X_OK), name
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0, name
    postinst = scripts["postinst"].read_text()
    assert "adduser --system" in postinst and "--ingroup millgate" in postinst
    assert "/var/lib/millgate" in postinst and "/var/log/millgate" in postinst
    postrm = scripts["postrm"].read_text()
    purge = postrm[postrm.index('if [ "$1" = "purge" ]') :]
    assert "rm -rf /var/lib/millgate /var/log/millgate /etc/millgate" in purge
    assert "rm -rf" not in postrm[: postrm.index('if [ "$1" = "purge" ]')], "remove must keep config and data"


def test_systemd_unit_restarts_on_failure_runs_millgate_and_verifies(unpacked: Path) -> None:
    unit_text = (unpacked / "lib/systemd/system/millgate.service").read_text()
    assert "Restart=on-failure" in unit_text
    assert "ExecStart=/opt/millgate/bin/millgate run " in unit_text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify against the package's own tree plus the host's units (for sysinit.target and friends)
    shutil.copytree("/lib/systemd/system", unpacked / "lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={unpacked}", "/lib/systemd/system/millgate.service"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.package
@pytest.mark.slow
@pytest.mark.timeout(900)  # the .deb build and lintian each take minutes on 2 busy cores
def test_lintian_reports_no_errors(deb: Path) -> None:
    result = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")]


# ---- install on a fresh Debian 12 root ---------------------------------------------------------


@contextlib.contextmanager
def _mounted(root: Path) -> Iterator[None]:
    mounts = [("proc", root / "proc", ["-t", "proc"]), ("/dev", root / "dev", ["--rbind"])]
    done = []
    try:
        for source, target, options in mounts:
            subprocess.run(["mount", *options, source, str(target)], check=True)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-l", str(target)], check=False)


def _chroot(root: Path, *command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    return subprocess.run(["chroot", str(root), *command], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def debian_root() -> Iterator[Path]:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed: run `make package-test`")
    root = Path(tempfile.mkdtemp(prefix="mgroot", dir="/var/tmp"))
    root.chmod(0o755)  # it becomes "/" in the chroot: mkdtemp's 0700 would lock every non-root user out
    mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # as on a machine under construction: packages never start services from their maintainer scripts
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    yield root
    subprocess.run(["umount", "-R", str(root / "dev")], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.package
@pytest.mark.slow
@pytest.mark.timeout(1800)  # debootstrap downloads and installs a whole Debian root
def test_package_installs_on_fresh_debian_checks_runs_and_purges(deb: Path, debian_root: Path) -> None:
    root = debian_root
    shutil.copy(deb, root / "tmp" / deb.name)
    with _mounted(root):
        assert _chroot(root, "apt-get", "update", "-qq").returncode == 0
        install = _chroot(root, "apt-get", "install", "-y", "-qq", f"/tmp/{deb.name}")
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        assert _chroot(root, "getent", "passwd", "millgate").returncode == 0
        for directory in ("/var/lib/millgate", "/var/log/millgate"):
            assert (root / directory.lstrip("/")).is_dir(), directory
        check = _chroot(root, "millgate", "check")
        assert check.returncode == 0, check.stdout + check.stderr

        # the service's command, as systemd would run it (no systemd inside a chroot)
        service = subprocess.Popen(
            ["chroot", str(root), "/opt/millgate/bin/millgate", "run", "--config", "/etc/millgate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline:
                status = _chroot(root, "millgate", "status")
                running = [line for line in status.stdout.splitlines() if " RUNNING " in line]
                if status.returncode == 0 and "broker: reachable" in status.stdout and len(running) >= 2:
                    break  # broker and core past supervisord's startsecs, and the broker takes a login
                time.sleep(1)
            logs = _chroot(root, "millgate", "logs", "-n", "40").stdout
            assert status is not None and "broker: reachable" in status.stdout, f"{status.stdout}\n{logs}"
            assert re.search(r"^core\s+RUNNING", status.stdout, re.M), status.stdout
            assert re.search(r"^broker\s+RUNNING", status.stdout, re.M), status.stdout
        finally:
            os.killpg(service.pid, signal.SIGTERM)
            service.wait(20)

        remove = _chroot(root, "apt-get", "remove", "-y", "-qq", "millgate")
        assert remove.returncode == 0, remove.stderr
        assert (root / "etc/millgate/gateway.toml").is_file(), "remove keeps the config"
        assert (root / "var/lib/millgate").is_dir(), "remove keeps the state"
        purge = _chroot(root, "apt-get", "purge", "-y", "-qq", "millgate")
        assert purge.returncode == 0, purge.stderr
        for gone in ("etc/millgate", "var/lib/millgate", "var/log/millgate"):
            assert not (root / gone).exists(), gone
        assert _chroot(root, "getent", "passwd", "millgate").returncode != 0
