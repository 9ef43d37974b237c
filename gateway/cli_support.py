"""What every `millgate` verb shares: exit codes, loading the config (or exiting 2 with one line per
problem), and resolving the config/state/log directories from --config, --state and the config.
"""

from __future__ import annotations

import argparse
import sys

from gateway.config_loader import ConfigInvalid, LoadedConfig, load_config
from gateway.config_problems import Problem
from gateway.paths import GatewayPaths, default_state_dir

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


def paths_for(args: argparse.Namespace, loaded: LoadedConfig | None = None) -> GatewayPaths:
    state = args.state
    log_dir = None
    if loaded is not None:
        gateway = loaded.gateway.gateway
        if state is None and gateway.state_dir is not None:
            state = gateway.state_dir
        log_dir = gateway.log_dir
    return GatewayPaths.resolve(args.config, state or default_state_dir(), log_dir)


def load_or_exit(args: argparse.Namespace, strict: bool = False) -> LoadedConfig:
    try:
        return load_config(args.config, strict=strict)
    except ConfigInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None


def load_to_run(args: argparse.Namespace) -> tuple[LoadedConfig, list[Problem]]:
    """The config `millgate run` starts from, and what `config validate` would refuse in it though it
    runs (load_config's `strict`); exits 2 as load_or_exit when it cannot run. One load when it is valid."""
    try:
        return load_config(args.config, strict=True), []
    except ConfigInvalid as exc:
        return load_or_exit(args), list(exc.problems)


def load_quietly(args: argparse.Namespace) -> LoadedConfig | None:
    """The config if it is valid (for state_dir/log_dir); operator verbs still work without it."""
    try:
        return load_config(args.config)
    except ConfigInvalid:
        return None
