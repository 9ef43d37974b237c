"""What each supervised process depends on, as a fingerprint: the slices of the config a process
reads, hashed. It is rendered into the process's supervisord section, so supervisord's own
reloadConfig sees a process as changed exactly when its slice changed (supervisorctl update semantics).

A process not listed here depends on nothing but its command line. It reads files; it signals nothing.
The slices (documented for operators in docs/operations.md):

- every Python component: [gateway] and [logging] (identity, heartbeat period, log settings), and
  its broker login (it reads its secret once, at start: a secret written anew needs a restart)
- broker: its generated mosquitto.conf; a new ACL, login, server certificate or CRL is a reload (SIGHUP),
  not a restart (broker_reload_inputs)
- core: [broker], [discovery], [cloud], [deployment], [[shadows]], which on-demand functions there are,
  Greengrass v1 on-demand functions (entry, code version, granted resources) and the subscriptions
  that involve `shadow` or an on-demand function. A native on-demand function's own slice (entry, code
  version, granted resources) is not the core's: a change to it alone is a reconfiguration of that
  function inside the running core (in_core_fingerprints; functions/runtime.py swaps it in).
  Of a long-lived Greengrass v1 function the core holds its token, port, ARN, deployment problems and
  routes (its pool and its slot in the v1 API); its code version, timeout and queue size are read again
  from its runner spec when its restarted worker reports in (functions/greengrass/service.py)
- uplink: [broker], [cloud], [spool], [bulk], [[shadows]] and the subscriptions involving `cloud` or `shadow`
- adapter-<name>: adapters/<name>.toml, its register-map CSVs and the subscriptions naming `adapter:<name>`
- fn-<name> (long-lived): its entry, code version, granted resources and the subscriptions naming it
- logship: [gateway] and [logging] (with [logging.cloudwatch])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from gateway.acl import UPLINK, adapter_component, component_identities, function_component
from gateway.adapter_config import ModbusAdapter, register_map_path
from gateway.config import Function, GatewayConfig, Subscription
from gateway.config_loader import AdapterFile, LoadedConfig
from gateway.function_deploy import DeployedFunction
from gateway.paths import GatewayPaths
from gateway.supervisor_config import LOGSHIP


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dump(model: Any) -> Any:
    return None if model is None else model.model_dump(mode="json")


def _routes(config: GatewayConfig, endpoints: Iterable[str]) -> list[Any]:
    wanted = set(endpoints)
    return [_dump(s) for s in config.subscriptions if _involves(s, wanted)]


def _involves(subscription: Subscription, endpoints: set[str]) -> bool:
    return subscription.source in endpoints or subscription.target in endpoints


def _function_slice(config: GatewayConfig, function: Function, deployed: DeployedFunction | None) -> list[Any]:
    granted = {g.name for g in function.resources}
    return [
        _dump(function),
        [_dump(r) for r in config.resources if r.name in granted],
        None if deployed is None else [deployed.version, deployed.extra_groups, deployed.problems],
    ]


def _adapter_slice(config: GatewayConfig, name: str, adapter: AdapterFile) -> list[Any]:
    maps: list[Any] = []
    if isinstance(adapter.config, ModbusAdapter):
        for device in adapter.config.devices:
            csv = register_map_path(device, adapter.path.parent)
            if csv is not None:
                maps.append([str(csv), csv.read_bytes().hex() if csv.is_file() else None])
    return [_dump(adapter.config), maps, _routes(config, [f"adapter:{name}"])]


def _resident_v1_slice(function: Function, deployed: DeployedFunction | None) -> list[Any]:
    """What the core holds of a long-lived v1 function, whose worker supervisord runs."""
    return [function.name, function.daemon_port, function.arn, None if deployed is None else deployed.problems]


def reconfigurable_in_core(function: Function) -> bool:
    """A native on-demand function: its pool in the core can take a new version without a restart."""
    return function.lifecycle == "on-demand" and function.runtime == "native"


def in_core_fingerprints(loaded: LoadedConfig, deployed: dict[str, DeployedFunction]) -> dict[str, str]:
    """Native on-demand function name -> fingerprint of its own slice, which the running core swaps in."""
    config = loaded.gateway
    return {
        f.name: _digest(_function_slice(config, f, deployed.get(f.name)))
        for f in config.functions
        if reconfigurable_in_core(f)
    }


def fingerprints(
    loaded: LoadedConfig,
    deployed: dict[str, DeployedFunction],
    mosquitto_conf: str,
    logins: dict[str, str] | None = None,
) -> dict[str, str]:
    """supervisord program name -> fingerprint of everything that program reads; `logins`: broker
    identity -> fingerprint of its secret (gateway.credentials.login_fingerprint)."""
    config = loaded.gateway
    common = [_dump(config.gateway), _dump(config.logging)]
    on_demand = [f for f in config.functions if f.lifecycle == "on-demand"]
    resident_v1 = [f for f in config.functions if f.lifecycle == "long-lived" and f.runtime == "greengrass-v1"]
    found = {
        "broker": _digest(mosquitto_conf),
        "core": _digest(
            common,
            [_dump(config.broker), _dump(config.discovery), _dump(config.cloud), _dump(config.deployment)],
            [_dump(s) for s in config.shadows],
            [f.name for f in on_demand],
            [_function_slice(config, f, deployed.get(f.name)) for f in on_demand if not reconfigurable_in_core(f)],
            _routes(config, ["shadow", *(f"function:{f.name}" for f in [*on_demand, *resident_v1])]),
            *([[_resident_v1_slice(f, deployed.get(f.name)) for f in resident_v1]] if resident_v1 else []),
        ),
        UPLINK: _digest(
            common,
            [_dump(config.broker), _dump(config.cloud), _dump(config.spool), _dump(config.bulk)],
            [_dump(s) for s in config.shadows],
            _routes(config, ["cloud", "shadow"]),
        ),
    }
    found[LOGSHIP] = _digest(common)
    for function in config.functions:
        if function.lifecycle == "long-lived":
            found[function_component(function.name)] = _digest(
                common,
                _function_slice(config, function, deployed.get(function.name)),
                _routes(config, [f"function:{function.name}"]),
            )
    for name, adapter in loaded.adapters.items():
        found[adapter_component(name)] = _digest(common, _adapter_slice(config, name, adapter))
    for program, identity in component_identities(config, loaded.adapters).items():
        if program in found and logins and identity in logins:
            found[program] = _digest(found[program], logins[identity])
    return found


def broker_reload_inputs(paths: GatewayPaths) -> str:
    """A digest of what a running broker reads again on SIGHUP: the ACL, the password file (whose bytes
    change exactly when a login does: gateway/credentials.py), its TLS certificate and key, the CRL.
    When it differs after a render, the broker must reload (a new login, or a certificate re-issued
    for new names or at its renewal time, would otherwise not be served)."""
    digest = hashlib.sha256()
    for path in (paths.acl_file, paths.password_file, paths.server_cert, paths.server_key, paths.crl_file):
        digest.update(path.read_bytes() if path.exists() else b"missing")
        digest.update(b"\0")
    return digest.hexdigest()
