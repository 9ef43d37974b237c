"""One deployment, start to end: validate the new config, snapshot it, render it, apply it to the
running gateway restarting only what changed (a native on-demand function alone is reconfigured inside
the running core), wait for it to come up healthy, and roll back to the
previous snapshot by itself when it does not, or when anything else goes wrong once the new snapshot
is current (an unexpected error, Ctrl-C). Every attempt lands in the deployment history with its result.

`millgate deploy` and cloud-driven deployments both call `deploy`; neither prints from here.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.broker_config import BrokerNotInstalled
from gateway.config_loader import ConfigInvalid, LoadedConfig, load_config
from gateway.deploy_apply import (
    ApplyFailed,
    Changes,
    GatewayNotRunning,
    apply_rendered,
    gateway_running,
    reconfigure_core,
    wait_healthy,
)
from gateway.deploy_plan import broker_reload_inputs, in_core_fingerprints
from gateway.deploy_store import DeploymentStore, DeployStoreError, HistoryEntry, config_digest, utc_now
from gateway.function_deploy import read_manifest
from gateway.launch import StateDirError, render
from gateway.paths import GatewayPaths

log = logging.getLogger(__name__)


@dataclass
class DeployOutcome:
    result: str  # succeeded | staged | rolled-back | rollback-failed | failed | refused
    message: str
    number: int | None = None
    version: str = ""
    changes: Changes | None = None
    rollback: Changes | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("succeeded", "staged")


def deploy(
    source: Path,
    paths: GatewayPaths,
    by: str = "deploy",
    version: str | None = None,
    timeout_s: float | None = None,
) -> DeployOutcome:
    """Deploy the config dir `source` onto the gateway whose state dir is paths.state_dir."""
    try:
        loaded = load_config(source, strict=True)
    except ConfigInvalid as exc:
        return _refused(paths, source, by, version, str(exc))
    store = DeploymentStore(paths.state_dir, loaded.gateway.deployment.keep)
    try:
        with store.locked():
            return _deploy_locked(store, source, loaded, paths, by, version or config_digest(source), timeout_s)
    except (DeployStoreError, OSError) as exc:
        return DeployOutcome("failed", f"{store.root}: {exc}")


def record_refusal(paths: GatewayPaths, source: Path, by: str, version: str | None, why: str) -> DeployOutcome:
    """Log and record in the history a deployment refused before anything changed (e.g. a bad bundle)."""
    return _refused(paths, source, by, version, why)


def _refused(paths: GatewayPaths, source: Path, by: str, version: str | None, why: str) -> DeployOutcome:
    store = DeploymentStore(paths.state_dir)
    entry = HistoryEntry(0, version or "-", utc_now(), str(source), by, "refused", why)
    try:
        with store.locked():
            store.record(entry)
    except (DeployStoreError, OSError) as exc:
        log.warning("event=history-not-written reason=%s", exc)
    log.error("event=deployment-refused source=%s reason=%s", source, why.replace("\n", "; "))
    return DeployOutcome("refused", why, version=version or "")


def _deploy_locked(
    store: DeploymentStore,
    source: Path,
    loaded: LoadedConfig,
    paths: GatewayPaths,
    by: str,
    version: str,
    timeout_s: float | None,
) -> DeployOutcome:
    previous = store.current()
    live = replace(paths, config_dir=store.current_config)
    number = store.snapshot(source)
    entry = HistoryEntry(number, version, utc_now(), str(source), by, "running")
    store.record(entry)
    try:
        running = gateway_running(live)
        reload_before = broker_reload_inputs(live)
        in_core_before = _in_core(live)
    except Exception as exc:  # nothing changed yet: record why, leave the gateway as it is
        return _finish(store, entry, "failed", describe_unexpected(exc))
    store.set_current(number)
    log.info("event=deployment-started deployment=%d version=%s source=%s", number, version, source)
    try:
        new = load_config(store.current_config)
        render(new, live)
        if not running:
            return _finish(store, entry, "staged", "gateway not running: the next `millgate run` starts this config")
        in_core_after = _deployed_in_core(new, live)
        changes = _apply(live, reload_before, in_core_before, in_core_after)
        entry.changes = changes.as_dict()
        _wait_healthy(live, new, changes, in_core_after, timeout_s)
    except GatewayNotRunning as exc:
        return _finish(store, entry, "staged", f"gateway stopped during the deployment ({exc})")
    except (ApplyFailed, ConfigInvalid, StateDirError, BrokerNotInstalled) as exc:
        log.error("event=deployment-failed deployment=%d reason=%s", number, exc)
        return _roll_back(store, entry, previous, live, running, str(exc))
    except (Exception, KeyboardInterrupt) as exc:  # half applied: never leave it so, whatever went wrong
        log.error("event=deployment-failed deployment=%d reason=%s", number, describe_unexpected(exc))
        return _roll_back(store, entry, previous, live, running, describe_unexpected(exc))
    outcome = _finish(store, entry, "succeeded", changes.summary())
    outcome.changes = changes
    return outcome


def describe_unexpected(exc: BaseException) -> str:
    """One line for an error no step expected: what it was and the line it came from (for a bug report);
    also what `millgate` prints instead of a traceback (gateway/cli.py)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"unexpected {type(exc).__name__}{where}: {exc}"


def _apply(
    live: GatewayPaths,
    reload_before: str,
    in_core_before: dict[str, str],
    in_core_after: dict[str, str],
) -> Changes:
    """Apply the config just rendered to the running gateway: supervisord, the broker (reloaded when
    broker_reload_inputs changed: ACL, logins, its certificate, the CRL), the core."""
    changes = apply_rendered(live, broker_reload_inputs(live) != reload_before)
    reconfigure_core(live, in_core_before, in_core_after, changes)
    return changes


def _wait_healthy(
    live: GatewayPaths,
    loaded: LoadedConfig,
    changes: Changes,
    in_core: dict[str, str],
    timeout_s: float | None = None,
) -> None:
    """Wait for what `changes` started or reconfigured to be healthy (gateway/deploy_apply.py);
    `in_core`: the fingerprints `loaded` deploys in the core (_deployed_in_core)."""
    from gateway.acl import CORE, function_component

    programs, components = changes.started, {}
    if CORE in changes.started:  # the core also serves the on-demand functions
        on_demand = [function_component(f.name) for f in loaded.gateway.functions if f.lifecycle == "on-demand"]
        components[CORE] = [CORE, *on_demand]
    elif changes.reconfigured:  # the same core, each reconfigured function's heartbeat from its new version
        programs = [*programs, CORE]
        components[CORE] = [function_component(name) for name in changes.reconfigured]
    fingerprints = {function_component(name): in_core[name] for name in changes.reconfigured}
    settings = loaded.gateway.deployment
    wait_healthy(live, programs, components, timeout_s or settings.health_timeout_s, settings.settle_s, fingerprints)


def _in_core(paths: GatewayPaths) -> dict[str, str]:
    """What the core should be running of its native on-demand functions, per paths' config and the
    functions deployed for it (none when there is no config yet)."""
    try:
        return _deployed_in_core(load_config(paths.config_dir), paths)
    except (ConfigInvalid, OSError, ValueError, TypeError):
        return {}


def _deployed_in_core(loaded: LoadedConfig, paths: GatewayPaths) -> dict[str, str]:
    """The native on-demand functions `loaded` has the core run, with their fingerprints."""
    return in_core_fingerprints(loaded, read_manifest(paths.state_dir / "functions"))


def _finish(store: DeploymentStore, entry: HistoryEntry, result: str, message: str) -> DeployOutcome:
    entry.result, entry.message = result, message
    store.record(entry)
    log.info("event=deployment-%s deployment=%d %s", result, entry.number, message)
    changes = Changes(**{k: v for k, v in entry.changes.items() if k != "rollback"}) if entry.changes else None
    return DeployOutcome(result, message, entry.number, entry.version, changes)


def _roll_back(
    store: DeploymentStore, entry: HistoryEntry, previous: int | None, live: GatewayPaths, running: bool, why: str
) -> DeployOutcome:
    if previous is None or not store.exists(previous):
        return _finish(store, entry, "failed", f"{why}; no previous deployment to roll back to")
    in_core_before = _in_core(live)  # of the deployment that failed, which the core may be running
    rollback = Changes()
    try:
        store.set_current(previous)
        old = load_config(store.current_config)
        reload_before = broker_reload_inputs(live)
        render(old, live)
        if running:
            in_core_after = _deployed_in_core(old, live)
            rollback = _apply(live, reload_before, in_core_before, in_core_after)
            _wait_healthy(live, old, rollback, in_core_after)
    except (ApplyFailed, GatewayNotRunning, ConfigInvalid, StateDirError, BrokerNotInstalled) as exc:
        return _finish(store, entry, "rollback-failed", f"{why}; rolling back to deployment {previous} failed: {exc}")
    except Exception as exc:
        failed = f"{why}; rolling back to deployment {previous} failed: {describe_unexpected(exc)}"
        return _finish(store, entry, "rollback-failed", failed)
    except KeyboardInterrupt:  # a second Ctrl-C: say so in the history before giving up
        _finish(store, entry, "rollback-failed", f"{why}; rolling back to deployment {previous} was interrupted")
        raise
    entry.changes = {**entry.changes, "rollback": rollback.as_dict()}
    outcome = _finish(store, entry, "rolled-back", f"{why}; rolled back to deployment {previous}")
    outcome.rollback = rollback
    return outcome
