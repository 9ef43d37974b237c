"""`millgate import greengrass-v1 EXPORT_DIR --out CONFIG_DIR [--code ZIP_DIR]`: its arguments, output
and exit codes; the import itself is gateway/greengrass_import.py's."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from gateway.greengrass.arns import DEFAULT_DAEMON_PORT
from gateway.greengrass.export import GROUP_VERSION_FILE, ImportFailed
from gateway.greengrass_config_writer import NOTES_FILE
from gateway.greengrass_import import ImportOptions, import_group

EXIT_OK, EXIT_FAILED = 0, 1


def _run_as_argument(value: str) -> str:
    match = re.fullmatch(r"(\d+):(\d+)", value)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not UID:GID with neither 0")
    return value


def cmd_import_greengrass_v1(args: argparse.Namespace) -> int:
    try:
        plan = import_group(args.export_dir, args.out, args.code, ImportOptions(args.run_as, args.daemon_port))
    except ImportFailed as exc:
        print(f"millgate import greengrass-v1: {exc}\nnothing was written", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{args.out}: {len(plan.functions)} functions, {len(plan.subscriptions)} subscriptions, "
        f"{len(plan.resources)} resources, {len(plan.devices)} devices to enrol; "
        f"{len(plan.notes)} notes in {args.out / NOTES_FILE}"
    )
    for note in plan.notes:
        print(f"  note: {note}")
    return EXIT_OK


def add_import_parser(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """`millgate import greengrass-v1 ...`; `common` is unused: --out is the config dir it writes."""
    del common
    imports = verbs.add_parser("import", help="turn another runtime's configuration into a millgate config")
    kinds = imports.add_subparsers(dest="import_kind", required=True, metavar="KIND")
    v1 = kinds.add_parser(
        "greengrass-v1",
        help="a Greengrass v1 group (aws greengrass get-group-version and get-*-definition-version JSON)",
    )
    v1.add_argument(
        "export_dir", type=Path, metavar="EXPORT_DIR", help=f"holds {GROUP_VERSION_FILE} and the definition versions"
    )
    v1.add_argument("--out", type=Path, required=True, metavar="CONFIG_DIR", help="the config dir to create")
    v1.add_argument(
        "--code", type=Path, default=None, metavar="ZIP_DIR", help="the functions' zips (default: EXPORT_DIR)"
    )
    v1.add_argument(
        "--run-as",
        type=_run_as_argument,
        default=None,
        metavar="UID:GID",
        help="for functions without RunAs (default: ggc_user:ggc_group of this machine)",
    )
    v1.add_argument(
        "--daemon-port",
        type=int,
        default=DEFAULT_DAEMON_PORT,
        metavar="PORT",
        help=f"GG_DAEMON_PORT, the v1 API on 127.0.0.1 (default {DEFAULT_DAEMON_PORT})",
    )
    v1.set_defaults(handler=cmd_import_greengrass_v1)
