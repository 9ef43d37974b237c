"""Turns a validated config into a runnable gateway: state directories with their modes, component
credentials, mosquitto's config, password and ACL files, supervisord.conf; then hands over to
supervisord in the foreground.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from gateway.acl import OPERATOR, acl_file_text, compile_grants, component_identities
from gateway.atomic_file import write_atomic
from gateway.broker_config import mosquitto_binary, mosquitto_conf_text
from gateway.config_loader import LoadedConfig
from gateway.credentials import ensure_credentials, password_file_text
from gateway.paths import GatewayPaths
from gateway.service_user import ServiceUser, service_user
from gateway.supervisor_config import programs, supervisord_conf_text

log = logging.getLogger(__name__)


class StateDirError(RuntimeError):
    """The state or log directory cannot be used; the message says which and why."""


def _make_dir(path: Path, mode: int, owner: tuple[int, int]) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        if os.geteuid() == 0:
            os.chown(path, *owner)
    except OSError as exc:
        raise StateDirError(f"{path}: cannot create or use: {exc.strerror}") from exc


def ensure_state_dirs(paths: GatewayPaths, user: ServiceUser) -> None:
    too_long = paths.too_long_sockets()
    if too_long:
        raise StateDirError(f"{too_long[0]}: unix socket path longer than 107 bytes; use a shorter --state")
    _make_dir(paths.state_dir, 0o755, user.owner)
    _make_dir(paths.generated_dir, 0o750, user.owner)
    _make_dir(paths.run_dir, 0o755, user.owner)  # function workers must reach the broker socket
    _make_dir(paths.credentials_dir, 0o711, user.owner)  # open your own secret by name, list nothing
    _make_dir(paths.state_dir / "broker", 0o700, user.owner)
    _make_dir(paths.system_log_dir, 0o755, user.owner)


def prepare(loaded: LoadedConfig, paths: GatewayPaths) -> Path:
    """Write every generated file for `loaded`; return supervisord.conf's path."""
    user = service_user()
    ensure_state_dirs(paths, user)
    config = loaded.gateway
    identities = sorted(set(component_identities(config, loaded.adapters).values()) | {OPERATOR})
    # the operator identity stays with whoever owns the state dir (root under systemd)
    operator_owner = (os.geteuid(), os.getegid())
    creds = [
        ensure_credentials(paths.credentials_dir, i, operator_owner if i == OPERATOR else user.owner)
        for i in identities
    ]
    owner = user.owner if os.geteuid() == 0 else None
    write_atomic(paths.password_file, password_file_text(creds), 0o640, owner)
    write_atomic(paths.acl_file, acl_file_text(compile_grants(config, loaded.adapters)), 0o640, owner)
    mosquitto = mosquitto_binary()
    write_atomic(paths.mosquitto_conf, mosquitto_conf_text(config, paths, user), 0o640, owner)
    conf = supervisord_conf_text(config, paths, user, programs(loaded, paths, mosquitto))
    write_atomic(paths.supervisord_conf, conf, 0o640, owner)
    return paths.supervisord_conf


def exec_supervisord(conf: Path) -> None:
    """Replace this process with supervisord, so SIGTERM from systemd or a shell reaches it directly."""
    argv = [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "--configuration", str(conf)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
