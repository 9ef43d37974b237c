"""The `millgate` command: argument parsing and exit codes for every verb; each verb's work lives in
its own module.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from pathlib import Path

from gateway.bundle_cli import add_bundle_parser
from gateway.cli_support import EXIT_FAILED, EXIT_OK, load_or_exit, load_quietly, load_to_run, paths_for
from gateway.deploy_cli import add_deploy_parser
from gateway.greengrass_import_cli import add_import_parser
from gateway.logs_cli import add_logs_parser
from gateway.opcua_cli import add_opcua_parser
from gateway.paths import default_config_dir
from gateway.security_cli import add_security_parsers
from gateway.shadow_cli import add_shadow_parser
from gateway.spool_cli import add_spool_parser

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_READER_GONE = 141  # 128 + SIGPIPE: what a shell reports for a program whose reader went away


def cmd_config_validate(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args, strict=True)
    print(
        f"{loaded.config_dir}: valid ({len(loaded.gateway.functions)} functions, {len(loaded.adapters)} adapters, "
        f"{len(loaded.gateway.subscriptions)} subscriptions)"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.broker_config import BrokerNotInstalled
    from gateway.launch import StateDirError, exec_supervisord, prepare

    loaded, problems = load_to_run(args)
    for problem in problems:
        print(f"millgate run: warning: {problem} (runs as it is; `millgate deploy` would refuse it)", file=sys.stderr)
    try:
        conf = prepare(loaded, paths_for(args, loaded))
    except (StateDirError, BrokerNotInstalled) as exc:
        print(f"millgate run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    exec_supervisord(conf)
    return EXIT_FAILED  # not reached: exec replaced this process


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.status import gather_status, render_status

    paths = paths_for(args, load_quietly(args))
    report = gather_status(paths)
    print(render_status(report, as_json=args.json))
    return EXIT_OK if report.supervisor_reachable else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.check import check_config, render_checks, run_checks

    config, loaded = check_config(args.config)
    uids = loaded.gateway.gateway.component_uids if loaded else None
    results = [config, *run_checks(paths_for(args, loaded), uids)]
    print(render_checks(results))
    return EXIT_FAILED if any(r.required and not r.passed for r in results) else EXIT_OK


def cmd_pub(args: argparse.Namespace) -> int:
    from gateway.operator_client import OperatorError, publish_lines

    payloads = [args.payload] if args.payload is not None else (line.rstrip("\n") for line in sys.stdin)
    try:
        count = publish_lines(paths_for(args, load_quietly(args)), args.topic, payloads, args.qos, args.retain)
    except OperatorError as exc:
        print(f"millgate pub: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.payload is None:
        print(f"published {count} messages to {args.topic}", file=sys.stderr)
    return EXIT_OK


def cmd_sub(args: argparse.Namespace) -> int:
    from gateway.operator_client import OperatorError, subscribe_print

    try:
        complete = subscribe_print(paths_for(args, load_quietly(args)), args.filter, args.count, args.timeout)
    except OperatorError as exc:
        print(f"millgate sub: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if complete else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="config directory (default: /etc/millgate; ./etc/demo in a checkout)",
    )
    common.add_argument(
        "--state",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="state directory (default: /var/lib/millgate; ./var in a checkout)",
    )

    parser = argparse.ArgumentParser(prog="millgate", description="Edge runtime for factory gateways.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    config = verbs.add_parser("config", help="work with the configuration", parents=[common])
    config_verbs = config.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    validate = config_verbs.add_parser("validate", help="validate gateway.toml and adapters/*.toml", parents=[common])
    validate.set_defaults(handler=cmd_config_validate)

    run = verbs.add_parser("run", help="run the gateway (supervisord in the foreground)", parents=[common])
    run.set_defaults(handler=cmd_run)

    status = verbs.add_parser("status", help="state of every process and of the broker", parents=[common])
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=cmd_status)

    check = verbs.add_parser("check", help="check this machine can run millgate", parents=[common])
    check.set_defaults(handler=cmd_check)

    pub = verbs.add_parser("pub", help="publish on the local broker as the operator", parents=[common])
    pub.add_argument("topic")
    pub.add_argument("payload", nargs="?", help="without it: one payload per line from stdin")
    pub.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    pub.add_argument("--retain", action="store_true")
    pub.set_defaults(handler=cmd_pub)

    sub = verbs.add_parser("sub", help="print messages from the local broker as the operator", parents=[common])
    sub.add_argument("filter")
    sub.add_argument("-n", "--count", type=int, default=None, help="exit 0 after this many messages")
    sub.add_argument("--timeout", type=float, default=None, metavar="S", help="exit 1 if COUNT has not arrived")
    sub.set_defaults(handler=cmd_sub)

    add_security_parsers(verbs, common)
    add_shadow_parser(verbs, common)
    add_spool_parser(verbs, common)
    add_import_parser(verbs, common)
    add_deploy_parser(verbs, common)
    add_bundle_parser(verbs, common)
    add_logs_parser(verbs, common)
    add_opcua_parser(verbs, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SUPPRESS keeps `millgate config --config X validate` from being reset by the inner parser
    args.config = getattr(args, "config", None) or default_config_dir()
    args.state = getattr(args, "state", None)
    if sys.stdout is None:  # started with fd 1 closed (`>&-`): Python leaves no stdout to print to
        print(f"millgate {args.verb}: standard output is closed; send it to /dev/null to discard it", file=sys.stderr)
        return EXIT_FAILED
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # here, not in the interpreter's exit, so that a failure is handled below
        return code
    except KeyboardInterrupt:
        print(f"millgate {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        if _stdout_reader_gone():
            return _quiet_after_reader_gone()
        return _unexpected(args.verb, exc)
    except Exception as exc:  # the edge: one line an operator (or systemd's journal) can act on, not a traceback
        return _unexpected(args.verb, exc)


def _unexpected(verb: str, exc: Exception) -> int:
    from gateway.deploy import describe_unexpected

    print(f"millgate {verb}: {describe_unexpected(exc)}", file=sys.stderr)
    return EXIT_FAILED


def _stdout_reader_gone() -> bool:
    """Whether stdout's reader has gone (`| head -1` done): poll(2) reports POLLERR on a pipe's write end
    with no reader left, POLLHUP on a socket whose peer closed. A BrokenPipeError from elsewhere (the
    broker's or supervisord's socket) is no such thing and is reported."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_after_reader_gone() -> int:
    """End like a process killed by SIGPIPE, as `cat` or `grep` do when `head` stops reading: nothing on
    stderr and 141, so `set -o pipefail` and a caller can tell the output was cut short (an export that
    exits 0 would claim to be whole). stdout is pointed at /dev/null first, or the interpreter's final
    flush of what is still buffered fails again and prints "Exception ignored" (the signal module's
    documentation, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_READER_GONE


if __name__ == "__main__":
    sys.exit(main())
