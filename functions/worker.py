"""An on-demand worker process: started by the dispatcher already under the function's uid/gid, it
limits its own memory if no cgroup did, loads the handler once, then serves invocations from its stdin
and answers on fd 3 until stdin closes. stdout/stderr are the function's log.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import BinaryIO

from functions.handler import FunctionIdentity, call_handler, load_handler
from functions.limits import limit_address_space
from functions.protocol import encode_frame, read_frame, unb64


def _send(out: BinaryIO, message: dict[str, object]) -> None:
    out.write(encode_frame(message))
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millgate-worker")
    parser.add_argument("--function", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--code", type=Path, required=True)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--thing", required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args(argv)
    # The dispatcher ends this worker (stdin closed, or a kill); a stop signal sent to the core's whole
    # process group must not kill it mid-invocation before the core has stopped handing out work.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    requests = sys.stdin.buffer
    replies = os.fdopen(args.reply_fd, "wb")

    init = read_frame(requests)
    if init is None or init.get("type") != "init":
        return 1
    if not init.get("cgroup"):
        limit_address_space(args.memory_mb)
    identity = FunctionIdentity(args.function, args.version, args.thing, args.memory_mb)
    try:
        handler = load_handler(args.code, args.handler)
    except BaseException as exc:
        _send(
            replies,
            {"type": "init-failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
        )
        return 1
    _send(replies, {"type": "ready", "pid": os.getpid()})
    while (request := read_frame(requests)) is not None:
        outcome = call_handler(
            handler,
            identity,
            str(request["id"]),
            str(request["topic"]),
            unb64(str(request["payload"])),
            float(request["timeout_s"]),
        )
        if not outcome.ok:
            print(f"handler failed: {outcome.traceback}", file=sys.stderr, flush=True)
        reply = {"type": "result", "id": request["id"], "ok": outcome.ok, "result": outcome.result}
        # over its memory limit: this worker exits, and the dispatcher must not hand it another message
        _send(replies, {**reply, "error": outcome.error, "worker_exiting": outcome.memory_error})
        if outcome.memory_error:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
