"""What every component process shares at start-up: its command line (--config, --state), its
validated config, logging, its broker credentials, and a stop event set by SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.acl import component_identity
from gateway.component_users import drop_from_environment
from gateway.credentials import Credentials, CredentialsInvalid, load_credentials
from gateway.logs import setup_logging
from gateway.paths import GatewayPaths

if TYPE_CHECKING:
    from gateway.config_loader import LoadedConfig


@dataclass(frozen=True)
class ComponentContext:
    component: str
    loaded: LoadedConfig
    paths: GatewayPaths
    creds: Credentials
    name: str | None = None  # the adapter or function, for processes that run one


def component_arguments(kind: str, argv: list[str] | None = None) -> tuple[argparse.Namespace, str]:
    """The common command line (--config, --state, --name) and the component it names: `<kind>` or
    `<kind>-<NAME>` (the supervisord program, the status topic, the broker identity), e.g. adapter-line1."""
    parser = argparse.ArgumentParser(prog=f"millgate-{kind}")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--name", default=None, help="the adapter or function this process runs")
    args = parser.parse_args(argv)
    return args, f"{kind}-{args.name}" if args.name else kind


def component_credentials(paths: GatewayPaths, component: str) -> Credentials:
    """The component's broker credentials, or exit with the reason."""
    try:
        return load_credentials(paths.credentials_dir, component_identity(component))
    except (OSError, CredentialsInvalid) as exc:  # a damaged file is written anew by the next run or deploy
        print(f"{component}: cannot read its broker credentials: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def start_component(kind: str, argv: list[str] | None = None) -> ComponentContext:
    """Parse the common arguments and load everything a component needs, or exit with the reason.

    `kind` is core, uplink, adapter or fn (see component_arguments).
    """
    from gateway.config_loader import ConfigInvalid, load_config  # pydantic: not for the function runner

    drop_from_environment(os.environ)  # done already when started by supervisord (gateway/preload.py)
    args, component = component_arguments(kind, argv)
    # forked from supervisord (gateway/preload.py), the config it validated at start is here already
    preload = sys.modules.get("gateway.preload")
    try:
        loaded = (preload and preload.preloaded_config(args.config)) or load_config(args.config)
    except ConfigInvalid as exc:
        print(f"{component}: refusing to start on an invalid config:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    gateway = loaded.gateway.gateway
    paths = GatewayPaths.resolve(args.config, args.state, gateway.log_dir)
    logging_config = loaded.gateway.logging
    setup_logging(component, logging_config.levels.get(component, logging_config.level))
    creds = component_credentials(paths, component)
    return ComponentContext(component, loaded, paths, creds, args.name)


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT; call from inside the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
