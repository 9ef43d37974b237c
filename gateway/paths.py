"""Where a gateway keeps things: the config dir, the state dir and what lives under it, the log dir.

Resolves the defaults (system paths, or ./etc/demo and ./var in a millgate checkout) in one place.
It creates nothing; see `ensure_state_dirs`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/millgate")
SYSTEM_STATE = Path("/var/lib/millgate")
SYSTEM_LOGS = Path("/var/log/millgate")
UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes including the terminating NUL


def in_checkout(cwd: Path | None = None) -> bool:
    """True in a millgate source checkout: ./etc/demo/gateway.toml next to a pyproject.toml."""
    here = cwd or Path.cwd()
    return (here / "etc/demo/gateway.toml").is_file() and (here / "pyproject.toml").is_file()


def default_config_dir() -> Path:
    return Path("etc/demo") if in_checkout() else SYSTEM_CONFIG


def default_state_dir() -> Path:
    return Path("var") if in_checkout() else SYSTEM_STATE


@dataclass(frozen=True)
class GatewayPaths:
    config_dir: Path
    state_dir: Path
    log_dir: Path

    @classmethod
    def resolve(cls, config_dir: Path, state_dir: Path, log_dir: Path | None) -> GatewayPaths:
        state = state_dir.absolute()
        if log_dir is None:
            log_dir = SYSTEM_LOGS if state == SYSTEM_STATE else state / "log"
        return cls(config_dir.absolute(), state, log_dir.absolute())

    @property
    def generated_dir(self) -> Path:
        return self.state_dir / "generated"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def credentials_dir(self) -> Path:
        return self.state_dir / "credentials"

    @property
    def broker_socket(self) -> Path:
        return self.run_dir / "mqtt.sock"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def mosquitto_conf(self) -> Path:
        return self.generated_dir / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.generated_dir / "mosquitto.passwd"

    @property
    def acl_file(self) -> Path:
        return self.generated_dir / "mosquitto.acl"

    @property
    def supervisord_conf(self) -> Path:
        return self.generated_dir / "supervisord.conf"

    # each non-root component's own state, owned by the uid it runs as (gateway/component_users.py)
    @property
    def uplink_dir(self) -> Path:
        return self.state_dir / "uplink"

    @property
    def spool_db(self) -> Path:
        return self.uplink_dir / "spool.db"

    @property
    def bulk_db(self) -> Path:
        return self.uplink_dir / "bulk.db"

    @property
    def bulk_dir(self) -> Path:
        return self.uplink_dir / "bulk"

    @property
    def logship_dir(self) -> Path:
        return self.state_dir / "logship"

    def opcua_dir(self, adapter: str) -> Path:
        return self.state_dir / "opcua" / adapter

    # the group CA and everything it signs (0700, service user): see gateway/ca.py
    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "group-ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "group-ca.key.pem"

    @property
    def server_cert(self) -> Path:
        return self.ca_dir / "server.cert.pem"

    @property
    def server_key(self) -> Path:
        return self.ca_dir / "server.key.pem"

    @property
    def crl_file(self) -> Path:
        return self.ca_dir / "crl.pem"

    @property
    def device_registry(self) -> Path:
        return self.ca_dir / "devices.json"

    @property
    def system_log_dir(self) -> Path:
        return self.log_dir / "system"

    @property
    def user_log_dir(self) -> Path:
        return self.log_dir / "user"

    def function_log(self, function: str) -> Path:
        return self.user_log_dir / f"{function}.log"

    def component_log(self, component: str) -> Path:
        return self.system_log_dir / f"{component}.log"

    def too_long_sockets(self) -> list[Path]:
        return [p for p in (self.broker_socket, self.supervisor_socket) if len(os.fsencode(p)) > UNIX_SOCKET_MAX]
