"""An operator who is not root on a running gateway: `millgate status`, `spool stats` and `logs` say
that they cannot read what is root's, and what to do, instead of "gateway not running", a crash, or
nothing at all.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

# gateway.deploy and gateway.status: what main imports late, imported before the uid changes
import gateway.cli
import gateway.deploy
import gateway.status

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")


def main_as(uid: int, *argv: str) -> tuple[int, str, str]:
    """gateway.cli.main(argv) in a fork that has become `uid` (the interpreter lives where another uid
    may not exec it, so not a new process); its exit code, stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = os.fork()
        if child == 0:
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  (the child's own, for its lifetime)
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                code = gateway.cli.main(list(argv))
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()


def test_status_spool_and_logs_say_a_non_root_operator_cannot_read_them(gateway_factory) -> None:
    gw = gateway_factory()
    where = ("--config", str(gw.config_dir), "--state", str(gw.state_dir))

    code, out, _ = main_as(NOBODY, "status", *where)
    assert code == 1
    assert out.splitlines()[0] == (
        f"cannot query supervisord at {gw.paths.supervisor_socket}: permission denied; run as root"
    )

    code, out, err = main_as(NOBODY, "spool", "stats", *where)
    spool = gw.state_dir / "uplink" / "spool.db"
    assert (code, out) == (1, "")
    assert err == f"millgate spool: cannot read {spool}: permission denied; run as root (or the uplink's user)\n"

    system_logs = gw.paths.log_dir / "system"
    system_logs.chmod(0o750)  # as an installed gateway's log dir is: not for everyone
    code, out, err = main_as(NOBODY, "logs", *where)
    assert (code, out) == (1, "")
    assert err == (
        f"millgate logs: cannot read {system_logs}: permission denied; "
        "run as root (or as the user the gateway runs as)\n"
    )
