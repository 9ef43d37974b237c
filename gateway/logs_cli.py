"""`millgate logs [COMPONENT] [-f] [--since WHEN] [-n LINES]`: an operator's view of the system and
function logs under log_dir, one component or all of them merged by time, followed like `tail -F`.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.cli_support import EXIT_FAILED, EXIT_INVALID, EXIT_OK, load_quietly, paths_for
from gateway.log_files import FollowedFile, LogSource, file_head, line_time, log_sources

FOLLOW_POLL_S = 0.5
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadSince(ValueError):
    pass


def parse_since(value: str, now: float | None = None) -> float:
    """'90s', '10m', '2h', '1d' ago, or an ISO 8601 time (UTC unless it says otherwise) -> epoch seconds."""
    match = _AGO.match(value.strip())
    if match:
        return (now if now is not None else time.time()) - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadSince(f"--since {value!r}: use 10m, 2h, 1d or a time like 2024-05-01T08:00:00") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.now().astimezone().tzinfo)
    return stamp.timestamp()


class LogsUnreadable(Exception):
    pass


def _lines(source: LogSource, since: float | None, follow: bool) -> tuple[list[tuple[float, int, str]], FollowedFile]:
    """(time, order, line) for a source's lines, rotated files included when --since reaches back, and a
    reader of the live file that goes on exactly where this one stopped (a follower starting from the
    file's end as it is later would skip what was written in between). When following, a last line
    still being written is left to that reader, to be shown whole."""
    files = source.generations() if since is not None else [source.path]
    found: list[tuple[float, int, str]] = []
    followed = FollowedFile(source.path)
    last = 0.0
    for path in files:
        try:
            with path.open("rb") as handle:
                data = handle.read()
                if path == source.path:
                    if follow:
                        data = data[: data.rfind(b"\n") + 1]
                    followed = FollowedFile(path, os.fstat(handle.fileno()).st_ino, len(data), file_head(handle))
        except FileNotFoundError:
            continue  # rotated away while we looked
        except OSError as exc:
            raise LogsUnreadable(_cannot_read(path, exc)) from exc
        for line in data.decode(errors="replace").splitlines():
            stamp = line_time(line)
            last = stamp if stamp is not None else last  # continuation lines go with the line above
            if since is None or last >= since:
                found.append((last, len(found), line))
    return found, followed


def _check_readable(log_dir: Path) -> None:
    """An unreadable log dir globs as empty; say so instead of showing nothing."""
    for directory in (log_dir / "system", log_dir / "user"):
        try:
            os.listdir(directory)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LogsUnreadable(_cannot_read(directory, exc)) from exc


def _cannot_read(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read {path}: permission denied; run as root (or as the user the gateway runs as)"
    return f"cannot read {path}: {exc.strerror or exc}"


def _prefix(component: str, many: bool) -> str:
    return f"{component}: " if many else ""


def cmd_logs(args: argparse.Namespace) -> int:
    paths = paths_for(args, load_quietly(args))
    try:
        _check_readable(paths.log_dir)
    except LogsUnreadable as exc:
        print(f"millgate logs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    sources = log_sources(paths.log_dir)
    if args.component:
        name = args.component if args.component in sources else f"fn-{args.component}"
        if name not in sources:
            known = ", ".join(sources) or "none yet"
            print(
                f"millgate logs: no log for {args.component!r} under {paths.log_dir} (known: {known})", file=sys.stderr
            )
            return EXIT_FAILED
        chosen = [sources[name]]
    else:
        chosen = list(sources.values())
    try:
        since = parse_since(args.since) if args.since else None
    except BadSince as exc:
        print(f"millgate logs: {exc}", file=sys.stderr)
        return EXIT_INVALID
    many = len(chosen) > 1
    backlog: list[list[tuple[float, int, str]]] = []
    followed: dict[str, FollowedFile] = {}
    try:
        for source in chosen:
            lines, followed[source.component] = _lines(source, since, args.follow)
            backlog.append([(t, i, f"{_prefix(source.component, many)}{line}") for t, i, line in lines])
    except LogsUnreadable as exc:
        print(f"millgate logs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    shown = [line for _, _, line in heapq.merge(*backlog)]
    if since is None:
        shown = shown[-args.lines :] if args.lines > 0 else []
    for line in shown:
        print(line)
    sys.stdout.flush()
    if args.follow:
        _follow(followed, many, paths.log_dir, args.component is None)
    return EXIT_OK


def _follow(followed: dict[str, FollowedFile], many: bool, log_dir: Path, pick_up_new: bool) -> None:
    try:
        while True:
            if pick_up_new:  # a component started after us (a new function, an adapter just deployed)
                for name, source in log_sources(log_dir).items():
                    followed.setdefault(name, FollowedFile(source.path))
                many = many or len(followed) > 1
            for name, tail in followed.items():
                for line in tail.read_lines():
                    print(f"{_prefix(name, many)}{line}")
            sys.stdout.flush()
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return


def add_logs_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    parser = verbs.add_parser(
        "logs",
        help="show system and function logs (log_dir/system, log_dir/user)",
        parents=[common],
        description="Without COMPONENT: every component's log merged by time, each line prefixed with its "
        "component. COMPONENT is a name from `millgate status` (core, uplink, broker, adapter-<name>, "
        "fn-<name>) or a function's name.",
    )
    parser.add_argument("component", nargs="?", metavar="COMPONENT")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    parser.add_argument("--since", metavar="WHEN", help="lines from then on: 10m, 2h, 1d or an ISO time")
    parser.add_argument("-n", "--lines", type=int, default=50, help="last lines to show without --since (50)")
    parser.set_defaults(handler=cmd_logs)
