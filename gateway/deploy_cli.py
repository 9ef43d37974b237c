"""`millgate deploy [--config DIR]`: deploy a config onto the running gateway, restarting only what
changed, and print what changed; `millgate deploy --history` shows past deployments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from gateway.cli_support import EXIT_FAILED, EXIT_INVALID, EXIT_OK, load_quietly, paths_for

EXIT_CODES = {"succeeded": EXIT_OK, "staged": EXIT_OK, "refused": EXIT_INVALID}


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.history:
        return _show_history(args)
    from gateway.deploy import deploy

    outcome = deploy(args.config, paths_for(args, load_quietly(args)), timeout_s=args.timeout)
    if outcome.result == "refused":
        print(f"millgate deploy: {args.config}: refused, nothing changed:", file=sys.stderr)
        print(outcome.message, file=sys.stderr)
        return EXIT_INVALID
    stream = sys.stdout if outcome.ok else sys.stderr
    print(f"deployment {outcome.number} (version {outcome.version}): {outcome.result}", file=stream)
    if outcome.changes is not None:
        print(f"  changed: {outcome.changes.summary()}", file=stream)
    if outcome.rollback is not None:
        print(f"  rollback: {outcome.rollback.summary()}", file=stream)
    if not outcome.ok or outcome.result == "staged":
        print(f"  {outcome.message}", file=stream)
    return EXIT_CODES.get(outcome.result, EXIT_FAILED)


def _show_history(args: argparse.Namespace) -> int:
    from gateway.deploy_store import DeploymentStore, DeployStoreError

    store = DeploymentStore(paths_for(args, load_quietly(args)).state_dir)
    try:
        entries = store.history()
    except DeployStoreError as exc:
        print(f"millgate deploy: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return EXIT_OK
    current = store.current()
    print(f"{'#':>4}  {'TIME':<20} {'VERSION':<14} {'BY':<8} {'RESULT':<16} SOURCE")
    for e in entries:
        mark = "*" if e.number == current and e.result in ("succeeded", "running", "staged") else " "
        number = str(e.number) if e.number else "-"
        print(f"{number:>4}{mark} {e.time:<20} {e.version:<14} {e.by:<8} {e.result:<16} {e.source}")
        detail = _detail(e.changes, e.message, e.result)
        if detail:
            print(f"      {detail}")
    return EXIT_OK


def _detail(changes: dict[str, Any], message: str, result: str) -> str:
    if result in ("succeeded", "running") and changes:
        from gateway.deploy_apply import Changes

        return Changes(**{k: v for k, v in changes.items() if k != "rollback"}).summary()
    return message.splitlines()[0] if message else ""


def add_deploy_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    parser = verbs.add_parser(
        "deploy",
        help="apply a config to the running gateway, restarting only what changed",
        parents=[common],
        description="Validate the config dir, restart only the processes whose own config changed, reload the "
        "broker for new ACLs, and roll back by itself when the new processes do not come up healthy.",
    )
    parser.add_argument("--history", action="store_true", help="show past deployments instead")
    parser.add_argument("--json", action="store_true", help="with --history: print JSON")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="health deadline (default: [deployment])"
    )
    parser.set_defaults(handler=cmd_deploy)
