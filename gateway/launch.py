"""Turns a validated config into a runnable gateway: state directories with their modes, component
credentials, mosquitto's config, password and ACL files, supervisord.conf; then hands over to
supervisord in the foreground.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from functions.runtime import write_runner_specs
from gateway.acl import CORE, OPERATOR, acl_file_text, compile_grants, component_identities, function_identity
from gateway.atomic_file import write_atomic
from gateway.broker_config import mosquitto_binary, mosquitto_conf_text
from gateway.ca import load_ca
from gateway.component_state import (
    ComponentStateError,
    component_accounts,
    ensure_component_dirs,
    grant_cloud_files,
    move_legacy_state,
)
from gateway.component_users import RUN_AS_ENV, ComponentUser
from gateway.config_loader import LoadedConfig
from gateway.credentials import ensure_credentials, login_fingerprint, password_file_text
from gateway.deploy_plan import fingerprints
from gateway.device_registry import load_records, revoked_things
from gateway.function_deploy import DeployedFunction, DeployError, deploy_function, read_manifest, write_manifest
from gateway.owned_dirs import make_owned_dir
from gateway.paths import GatewayPaths
from gateway.resource_grants import grant_resources
from gateway.service_user import ServiceUser, service_user
from gateway.supervisor_config import Program, programs, supervisord_conf_text

log = logging.getLogger(__name__)


class StateDirError(RuntimeError):
    """The state or log directory cannot be used; the message says which and why."""


def _make_dir(path: Path, mode: int, owner: tuple[int, int]) -> None:
    try:
        make_owned_dir(path, mode, owner if os.geteuid() == 0 else None)
    except OSError as exc:
        raise StateDirError(f"{path}: cannot create or use: {exc.strerror}") from exc


def ensure_state_dirs(paths: GatewayPaths, user: ServiceUser) -> None:
    """Under root, what only root writes is root's (the state dir itself, generated files, secrets,
    logs), so neither mosquitto nor a component can leave a link there for root to follow; the
    service user owns only what mosquitto writes (its persistence and its socket's directory)."""
    too_long = paths.too_long_sockets()
    if too_long:
        raise StateDirError(f"{too_long[0]}: unix socket path longer than 107 bytes; use a shorter --state")
    root = (0, user.gid) if os.geteuid() == 0 else user.owner
    _make_dir(paths.state_dir, 0o755, root)
    _make_dir(paths.generated_dir, 0o750, root)  # mosquitto reads its config through the group
    _make_dir(paths.run_dir, 0o755, user.owner)  # function workers must reach the broker socket
    _make_dir(paths.credentials_dir, 0o711, root)  # open your own secret by name, list nothing
    _make_dir(paths.state_dir / "broker", 0o700, user.owner)
    _make_dir(paths.system_log_dir, 0o755, root)
    _make_dir(paths.user_log_dir, 0o755, root)


def prepare(loaded: LoadedConfig, paths: GatewayPaths) -> Path:
    """`millgate run`: adopt the deployment to run (see adopt_deployment), write every generated file
    for it; return supervisord.conf's path."""
    loaded, paths = adopt_deployment(loaded, paths)
    try:
        move_legacy_state(paths)  # nothing runs yet: safe to move SQLite files
    except OSError as exc:
        raise StateDirError(f"moving state into its components' directories: {exc}") from exc
    return render(loaded, paths)


def adopt_deployment(loaded: LoadedConfig, paths: GatewayPaths) -> tuple[LoadedConfig, GatewayPaths]:
    """The config a start runs on, as a deployment snapshot every process reads through the stable
    <state>/deployments/current link: the given config dir when it changed since it was last deployed
    (or nothing was ever deployed), else the current deployment (`millgate deploy` or the cloud may
    have moved on from it, and a restart must not undo that)."""
    from gateway.config_loader import ConfigInvalid, load_config
    from gateway.deploy_store import DeploymentStore, DeployStoreError, HistoryEntry, config_digest, utc_now

    store = DeploymentStore(paths.state_dir, loaded.gateway.deployment.keep)
    if paths.config_dir == store.current_config:
        return loaded, paths
    try:
        with store.locked():
            source = paths.config_dir
            version = config_digest(source)
            last = store.last_from(source)
            current = store.current()
            adopted = None
            if current is not None and store.exists(current) and last is not None and last.version == version:
                try:
                    adopted = load_config(store.current_config)
                except ConfigInvalid as exc:
                    log.error("event=current-deployment-invalid deployment=%d reason=%s", current, exc)
            if adopted is None:
                number = store.snapshot(source)
                store.set_current(number)
                store.record(HistoryEntry(number, version, utc_now(), str(source), "run", "running"))
                adopted = load_config(store.current_config)
    except (DeployStoreError, ConfigInvalid, OSError) as exc:
        raise StateDirError(f"{store.root}: cannot snapshot the config to run: {exc}") from exc
    log.info("event=deployment-adopted deployment=%s source=%s", store.current(), paths.config_dir)
    return adopted, replace(paths, config_dir=store.current_config)


def write_acl(loaded: LoadedConfig, paths: GatewayPaths) -> None:
    """The broker's ACL file from the subscriptions, leaving out devices whose certificates are revoked."""
    revoked: frozenset[str] = frozenset()
    if paths.ca_cert.exists():
        revoked = revoked_things(load_records(paths.device_registry), load_ca(paths).serial)
    owner = service_user().owner if as_root() else None
    grants = compile_grants(loaded.gateway, loaded.adapters, revoked)
    write_atomic(paths.acl_file, acl_file_text(grants), 0o640, owner)


def render(loaded: LoadedConfig, paths: GatewayPaths) -> Path:
    """Write every generated file for `loaded` as it is, with each program's config fingerprint."""
    user = service_user()
    ensure_state_dirs(paths, user)
    config = loaded.gateway
    try:
        accounts = component_accounts(loaded, paths, user)
        ensure_component_dirs(loaded, paths, accounts, user)
        grant_cloud_files(loaded, accounts)
    except ComponentStateError as exc:
        raise StateDirError(str(exc)) from exc
    owners = credential_owners(loaded, user, as_root(), accounts)
    creds = [ensure_credentials(paths.credentials_dir, i, owner) for i, owner in sorted(owners.items())]
    owner = user.owner if os.geteuid() == 0 else None
    write_atomic(paths.password_file, password_file_text(creds, _read_or_empty(paths.password_file)), 0o640, owner)
    mosquitto = mosquitto_binary()
    prepare_ca(loaded, paths, user)
    write_acl(loaded, paths)
    write_atomic(paths.mosquitto_conf, mosquitto_conf_text(config, paths, user), 0o640, owner)
    deploy_functions(loaded, paths)
    write_runner_specs(loaded, paths)
    logins = {c.username: login_fingerprint(c) for c in creds}
    found = fingerprints(loaded, read_manifest(paths.state_dir / "functions"), paths.mosquitto_conf.read_text(), logins)
    program_list = [
        with_account(replace(p, fingerprint=found.get(p.name, "")), accounts.get(p.name))
        for p in programs(loaded, paths, mosquitto)
    ]
    conf = supervisord_conf_text(config, paths, user, program_list)
    write_atomic(paths.supervisord_conf, conf, 0o600, (0, 0) if os.geteuid() == 0 else None)  # root's alone
    return paths.supervisord_conf


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def credential_owners(
    loaded: LoadedConfig, user: ServiceUser, root: bool, accounts: dict[str, ComponentUser] | None = None
) -> dict[str, tuple[int, int]]:
    """Every broker identity -> the (uid, gid) its secret file belongs to (mode 0600): the uid that
    runs the component. Under root: the core runs as root, so its secret is root's and no component
    can log in as the core; a function's secret is its own uid's, the uplink's and each adapter's
    their own uids' (`accounts`), so none can read another's. Without accounts (no service user) they
    run as, and their secrets belong to, `user`. The operator identity stays with whoever owns the
    state dir."""
    identities = component_identities(loaded.gateway, loaded.adapters)
    owners = dict.fromkeys(identities.values(), user.owner)
    if root:
        owners[CORE] = (0, 0)
        owners.update({function_identity(f.name): (f.uid, user.gid) for f in loaded.gateway.functions})
        owners.update({identities[c]: a.owner for c, a in (accounts or {}).items() if c in identities})
    owners[OPERATOR] = (os.geteuid(), os.getegid())
    return owners


def with_account(program: Program, account: ComponentUser | None) -> Program:
    """A program that runs under its own uid: started as root, it drops to `account` itself."""
    if account is None:
        return program
    environment = {**program.environment, RUN_AS_ENV: account.env_value()}
    return replace(program, environment=environment, as_service_user=False)


def prepare_ca(loaded: LoadedConfig, paths: GatewayPaths, user: ServiceUser) -> None:
    """Local security (issue 3): the group CA on first start, the broker's certificate and CRL current.
    A running broker picks up what was re-issued when the deployment reloads it (deploy_plan.broker_reload_inputs)."""
    from gateway.ca import CaError, ensure_ca
    from gateway.device_registry import RegistryCorrupt

    try:
        ensured = ensure_ca(paths, loaded.gateway, user.owner if as_root() else None)
    except (CaError, RegistryCorrupt, OSError) as exc:
        raise StateDirError(f"group CA: {exc}") from exc
    for what in ensured.reissued:
        log.info("event=ca-file-written what=%r", what)


def as_root() -> bool:
    return os.geteuid() == 0


def deploy_functions(loaded: LoadedConfig, paths: GatewayPaths) -> None:
    """Deploy every function's code and grant its resources; a function that cannot get them is
    recorded with its problems (it will refuse to run) while the rest of the gateway starts."""
    functions_dir = paths.state_dir / "functions"
    _make_dir(functions_dir, 0o711, (0, 0) if as_root() else (os.geteuid(), os.getegid()))
    resources = {r.name: r for r in loaded.gateway.resources}
    deployed = []
    for function in loaded.gateway.functions:
        try:
            found = deploy_function(function, loaded.function_code_path(function.code), functions_dir, as_root())
        except (DeployError, OSError) as exc:
            log.error("function=%s event=deploy-failed reason=%s", function.name, exc)
            found = DeployedFunction(function.name, "none", "", problems=[f"deploy failed: {exc}"])
        access = grant_resources(function, resources, as_root(), paths.state_dir, paths.config_dir, paths.log_dir)
        deployed.append(replace(found, extra_groups=access.extra_groups, problems=found.problems + access.problems))
    write_manifest(functions_dir, deployed)


def exec_supervisord(conf: Path) -> None:
    """Replace this process with supervisord, so SIGTERM from systemd or a shell reaches it directly."""
    argv = [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "--configuration", str(conf)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
