"""Applies a rendered deployment to a running gateway through supervisord's XML-RPC: reloadConfig,
then stop/remove/add only the process groups whose section changed, a broker reload for a new ACL,
login, certificate or CRL, a SIGHUP to a core that kept running when native on-demand functions of it
changed (it swaps their versions in: functions/runtime.py); then waits for what it started or
reconfigured to come up healthy (RUNNING and an online heartbeat of its own, from the new version).

It renders nothing and decides nothing about rollback; gateway/deploy.py does.
"""

from __future__ import annotations

import logging
import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any

from gateway.acl import CORE
from gateway.broker_reload import BROKER, BrokerReloadFailed, reload_broker
from gateway.paths import GatewayPaths
from gateway.status import SupervisorTimeout, read_component_status, supervisor_proxy
from gateway.supervisor_config import LOGSHIP

log = logging.getLogger(__name__)
NO_HEARTBEAT = frozenset({BROKER, LOGSHIP})  # not broker clients: RUNNING is all they can show
FAILED_STATES = frozenset({"BACKOFF", "FATAL", "EXITED", "STOPPED", "UNKNOWN"})
POLL_S = 0.2


class ApplyFailed(RuntimeError):
    pass


class GatewayNotRunning(RuntimeError):
    pass


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    broker_reloaded: bool = False
    reconfigured: list[str] = field(default_factory=list)  # functions swapped in the running core

    @property
    def started(self) -> list[str]:
        return sorted(self.added + self.restarted)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "restarted": self.restarted,
            "removed": self.removed,
            "broker_reloaded": self.broker_reloaded,
            "reconfigured": self.reconfigured,
        }

    def summary(self) -> str:
        parts = [f"{label}: {', '.join(names)}" for label, names in self._labelled() if names]
        if self.broker_reloaded:
            parts.append("broker reloaded (ACL, logins or certificates)")
        return "; ".join(parts) or "nothing changed"

    def _labelled(self) -> list[tuple[str, list[str]]]:
        return [
            ("restarted", self.restarted),
            ("reconfigured in core", self.reconfigured),
            ("added", self.added),
            ("removed", self.removed),
        ]


def gateway_running(paths: GatewayPaths) -> bool:
    try:
        supervisor_proxy(paths).supervisor.getState()
    except SupervisorTimeout:
        raise  # there but stuck: not stopped, so a deployment must not be staged as if it were
    except OSError:
        return False
    return True


def apply_rendered(paths: GatewayPaths, access_changed: bool) -> Changes:
    """Make the running supervisord match the supervisord.conf just rendered."""
    proxy = supervisor_proxy(paths)
    try:
        [[added, changed, removed]] = proxy.supervisor.reloadConfig()
        changes = Changes(sorted(added), sorted(changed), sorted(removed))
        # stop first, so a renamed identity's old process is gone before the broker forgets its login
        for name in changes.removed + changes.restarted:
            _stop_and_remove(proxy, name)
        if access_changed and BROKER not in changes.restarted:
            changes.broker_reloaded = reload_broker(paths)
        # the broker first, so what starts next finds it with the new users and ACL
        for name in sorted(changes.restarted + changes.added, key=lambda n: n != BROKER):
            proxy.supervisor.addProcessGroup(name)
    except SupervisorTimeout as exc:  # there, but stuck half-way: the deployment rolls back
        raise ApplyFailed(str(exc)) from exc
    except OSError as exc:
        raise GatewayNotRunning(f"supervisord at {paths.supervisor_socket}: {exc}") from exc
    except (xmlrpc.client.Fault, BrokerReloadFailed) as exc:
        raise ApplyFailed(f"supervisord refused the change: {exc}") from exc
    log.info("event=deployment-applied %s", changes.summary())
    return changes


def reconfigure_core(paths: GatewayPaths, before: dict[str, str], after: dict[str, str], changes: Changes) -> None:
    """After apply_rendered: if the core kept running and native on-demand functions of it changed
    (`before`/`after`: gateway.deploy_plan.in_core_fingerprints), SIGHUP it so it swaps them in."""
    changed = sorted(name for name, fingerprint in after.items() if before.get(name) != fingerprint)
    if not changed or CORE in changes.started:
        return
    try:
        supervisor_proxy(paths).supervisor.signalProcess(CORE, "HUP")
    except SupervisorTimeout as exc:
        raise ApplyFailed(str(exc)) from exc
    except OSError as exc:
        raise GatewayNotRunning(f"supervisord at {paths.supervisor_socket}: {exc}") from exc
    except xmlrpc.client.Fault as exc:
        raise ApplyFailed(f"core: cannot signal it to reconfigure {', '.join(changed)}: {exc}") from exc
    changes.reconfigured = changed
    log.info("event=core-reconfiguring functions=%s", ",".join(changed))


def _stop_and_remove(proxy: Any, name: str) -> None:
    try:
        proxy.supervisor.stopProcessGroup(name, True)
    except xmlrpc.client.Fault as exc:
        if "NOT_RUNNING" not in str(exc):
            raise
    proxy.supervisor.removeProcessGroup(name)


def wait_healthy(
    paths: GatewayPaths,
    programs: list[str],
    components: dict[str, list[str]],
    timeout_s: float,
    settle_s: float,
    fingerprints: dict[str, str] | None = None,
) -> None:
    """Every program in `programs` RUNNING with an online heartbeat from its own pid (and every
    component in components[program] likewise, e.g. the core's on-demand pools; one in `fingerprints`
    from that version of its config), staying so for `settle_s`, with the pid it had when this started;
    raises ApplyFailed naming the first that is not."""
    if not programs:
        return
    deadline = time.monotonic() + timeout_s
    healthy_since: float | None = None
    pids: dict[str, int] = {}
    while True:
        problem = _unhealthy(paths, programs, components, pids, fingerprints or {})
        now = time.monotonic()
        if problem is None:
            healthy_since = healthy_since or now
            if now - healthy_since >= settle_s:
                return
        elif problem.startswith("!"):
            raise ApplyFailed(problem[1:])
        else:
            healthy_since = None
        if now > deadline:
            raise ApplyFailed(f"not healthy within {timeout_s:g} s: {problem}")
        time.sleep(POLL_S)


def _unhealthy(
    paths: GatewayPaths,
    programs: list[str],
    components: dict[str, list[str]],
    pids: dict[str, int],
    fingerprints: dict[str, str],
) -> str | None:
    """None when all is well; a reason to keep waiting; or "!reason" for a failure that waiting cannot fix."""
    try:
        infos = {i["name"]: i for i in supervisor_proxy(paths).supervisor.getAllProcessInfo()}
    except OSError as exc:
        return f"!supervisord unreachable: {exc}"
    for name in programs:
        info = infos.get(name)
        if info is None:
            return f"!{name}: not known to supervisord"
        state = info["statename"]
        if state in FAILED_STATES:
            return f"!{name}: {state} ({info['description'] or info['spawnerr'] or 'exited'})"
        if state != "RUNNING":
            return f"{name}: {state}"
        if pids.setdefault(name, info["pid"]) != info["pid"]:
            return f"!{name}: restarted (pid {pids[name]} -> {info['pid']})"
    beats, error = read_component_status(paths)
    if error is not None:
        return f"broker: {error}"
    for name in programs:
        if name in NO_HEARTBEAT:
            continue
        for component in components.get(name, [name]):
            problem = _heartbeat_problem(
                component, beats.get(component), infos[name]["pid"], fingerprints.get(component)
            )
            if problem is not None:
                return problem
    return None


def _heartbeat_problem(component: str, beat: dict[str, Any] | None, pid: int, fingerprint: str | None) -> str | None:
    if beat is None or beat.get("pid") != pid:
        return f"{component}: no heartbeat from pid {pid} yet"
    if fingerprint is not None and beat.get("fingerprint") != fingerprint:
        return f"{component}: not reconfigured yet (running {beat.get('fingerprint')}, deployed {fingerprint})"
    if beat.get("state") != "online":
        return f"{component}: {beat.get('state')}"
    if beat.get("problems") or beat.get("function_state") in ("failed", "init-failed"):
        return f"!{component}: {beat.get('function_state', 'failed')}: {'; '.join(beat.get('problems') or [])}"
    return None
