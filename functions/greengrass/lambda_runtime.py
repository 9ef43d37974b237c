"""The function side of a Greengrass v1 worker (contract section 4), in a fresh interpreter of its own
under the function's uid: put millgate's `greengrass_common` / `greengrass_ipc_python_sdk` and the
function's code on the path, report its pid, forget millgate's own packages (the function's `gateway.py`
or `functions/` must be the ones it imports), import the handler module once (its module-level code,
loops included, runs now, is not timed and may never return), report the import, then GET work / call
the handler / POST the result until the core retires it.

It talks to the core only through the v1 HTTP API, with the IPC client it ships to functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from functions.greengrass.invocation import FunctionSide, Handler, call
from functions.limits import limit_address_space

RUNTIME_PATH = Path(__file__).resolve().parent / "runtime_path"
REQUIRED_ENVIRONMENT = (
    "MY_FUNCTION_ARN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "ENCODING_TYPE",
    "GGC_MAX_INTERFACE_VERSION",
)
CORE_WAIT_S = 60.0
RETIRED = (403, 410)  # the core no longer knows this worker: exit, the dispatcher has moved on
EXIT_OVER_MEMORY = 3
MILLGATE_PACKAGES = frozenset({"functions", "gateway", "storage", "adapters"})  # pyproject.toml's packages

log = logging.getLogger("greengrass.runtime")


def command(
    code_dir: Path, handler: str, memory_mb: int, timeout_s: float, *flags: str, python: str = sys.executable
) -> list[str]:
    """How the core (an on-demand worker) and a long-lived runner (by exec) start this runtime. -P: the
    code dir (the cwd) must not shadow the runtime; the runtime puts it on sys.path itself."""
    return [
        python,
        "-P",
        "-m",
        "functions.greengrass.lambda_runtime",
        "--code",
        str(code_dir),
        "--handler",
        handler,
        "--memory-mb",
        str(memory_mb),
        "--timeout-s",
        str(timeout_s),
        *flags,
    ]


def forget_millgate_modules() -> None:
    """Take millgate's packages out of sys.modules, so a function's own top-level `gateway`, `functions`
    and the like are what its imports find. This runtime keeps the module objects it already holds and
    imports nothing of millgate's after this; its own module is `__main__`."""
    for name in [m for m in sys.modules if m.partition(".")[0] in MILLGATE_PACKAGES]:
        del sys.modules[name]


def load_handler(code_dir: Path, handler: str) -> Handler:
    module_name, _, attribute = handler.rpartition(".")
    module = importlib.import_module(module_name)
    found = getattr(module, attribute, None)
    if not callable(found):
        raise AttributeError(f"{handler}: module {module_name!r} has no callable {attribute!r}")
    return found  # type: ignore[no-any-return]


def _prepare_path(code_dir: Path) -> None:
    # millgate's greengrass_common / ipc client first: a function zip's own old copies (port fixed to
    # 8000, no build_function_arn) would break greengrasssdk 1.6.1; both speak the same HTTP anyway
    for entry in (str(code_dir), str(RUNTIME_PATH)):
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)


def _wait_for_core(client: Any) -> None:
    """Until the core's API answers for this worker: module-level SDK calls need it up."""
    deadline = time.monotonic() + CORE_WAIT_S
    delay = 0.05
    while True:
        try:
            client.get_workers_health()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                log.error("event=core-unreachable reason=%s", exc)
                return
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def run(code_dir: Path, handler_name: str, side: FunctionSide, long_lived: bool = False) -> int:
    """Serve as this function's worker until retired (a long-lived function's worker never is: it
    waits for the core to come back); the process's exit code."""
    _prepare_path(code_dir)
    from greengrass_ipc_python_sdk.ipc_client import IPCClient, IPCException, WorkItem

    client = IPCClient()
    _wait_for_core(client)
    try:
        # before the import, which may never return: the core knows this worker by its pid from now on
        client.put_started(side.arn)
    except IPCException as exc:
        log.error("event=start-report-failed reason=%s", exc)
    forget_millgate_modules()
    try:
        handler = load_handler(code_dir, handler_name)
    except BaseException as exc:
        traceback.print_exc()
        try:
            client.put_initialization_result(side.arn, f'{type(exc).__name__}("{exc}")')
        except IPCException as report_failed:
            log.error("event=init-report-failed reason=%s", report_failed)
        return 1
    client.put_initialization_result(side.arn)
    delay = 0.05
    while True:
        try:
            work = client.get_work(side.arn)
        except IPCException as exc:
            if getattr(exc, "status", None) in RETIRED and not long_lived:
                return 0
            log.warning("event=get-work-failed reason=%s", exc)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.05
        outcome = call(handler, side, work.invocation_id, work.payload, work.client_context)
        try:
            if outcome.error is None:
                client.post_work_result(side.arn, WorkItem(work.invocation_id, outcome.payload, work.client_context))
            else:
                client.post_handler_err(side.arn, work.invocation_id, outcome.error, outcome.memory_error)
        except IPCException as exc:
            log.warning("event=post-result-failed invocation=%s reason=%s", work.invocation_id, exc)
        if outcome.memory_error:
            return EXIT_OVER_MEMORY  # the dispatcher replaces this worker with a fresh one


def function_side(memory_mb: int, timeout_s: float) -> FunctionSide:
    from gateway.greengrass.arns import parse_function_arn

    arn = parse_function_arn(os.environ["MY_FUNCTION_ARN"])
    return FunctionSide(
        str(arn), arn.name, arn.qualifier or "$LATEST", os.environ["ENCODING_TYPE"], memory_mb, timeout_s
    )


def setup_logging() -> None:
    # v1 sent the root logger to the function's log; samples log with no handler of their own
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millgate-greengrass-runtime")
    parser.add_argument("--code", type=Path, required=True)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--timeout-s", type=float, default=3.0)
    parser.add_argument("--limits-from-stdin", action="store_true", help="read 'cgroup' or 'rlimit' first")
    parser.add_argument("--long-lived", action="store_true", help="the single worker supervisord runs")
    parser.add_argument("--limit-address-space", action="store_true", help="RLIMIT_AS: no cgroup caps it")
    args = parser.parse_args(argv)
    if args.limits_from_stdin:  # spawned by the core's pool, which ends it; see functions/worker.py
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    missing = [name for name in REQUIRED_ENVIRONMENT if not os.environ.get(name)]
    if missing:
        print(f"greengrass runtime: missing environment {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.limit_address_space or (args.limits_from_stdin and sys.stdin.readline().strip() != "cgroup"):
        limit_address_space(args.memory_mb)
    setup_logging()
    return run(args.code, args.handler, function_side(args.memory_mb, args.timeout_s), args.long_lived)


if __name__ == "__main__":
    sys.exit(main())
