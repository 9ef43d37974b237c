"""`millgate spool stats|export FILE|purge --topic PREFIX`: the operator's view of the uplink's
store-and-forward spool (state_dir/uplink/spool.db), safe to use while the uplink runs (SQLite WAL).

It only reads, exports or deletes what the operator names; sending is the uplink's job.
"""

from __future__ import annotations

import argparse
import base64
import errno
import io
import json
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO

from gateway.atomic_file import written_whole
from gateway.cli_support import load_quietly, paths_for
from gateway.config import SpoolSection
from storage.spool import Spool, SpoolError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


def _open(args: argparse.Namespace) -> tuple[Spool, bool]:
    """The spool with the configured cap and policy; False when the config is invalid and the
    defaults stand in for them."""
    loaded = load_quietly(args)
    path = paths_for(args, loaded).spool_db
    section = loaded.gateway.spool if loaded is not None else SpoolSection()
    try:
        if not path.exists():
            raise SpoolError(f"no spool at {path} (the uplink has not run with this state directory)")
        return Spool(path, rules=None, max_bytes=int(section.max_bytes), policy=section.policy), loaded is not None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise SpoolError(f"cannot read {path}: permission denied; run as root (or the uplink's user)") from None
        raise SpoolError(f"cannot read {path}: {exc.strerror or exc}") from None


def _payload(payload: bytes) -> dict[str, str]:
    try:
        return {"payload": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(payload).decode()}


def cmd_spool_stats(args: argparse.Namespace) -> int:
    try:
        opened, configured = _open(args)
        with closing(opened) as spool:
            stats = spool.stats(by_priority=True)
    except SpoolError as exc:
        print(f"millgate spool: {exc}", file=sys.stderr)
        return EXIT_FAILED
    age = round(time.time() - stats.oldest_ts, 1) if stats.oldest_ts else None
    report: dict[str, Any] = {
        "messages": stats.messages,
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes if configured else None,
        "policy": spool.policy if configured else None,
        "oldest_age_s": age,
        "dead_letters": stats.dead_letters,
        "by_priority": stats.by_priority,
        "counters": stats.counters,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"waiting:      {stats.messages} messages, {stats.bytes} bytes")
    if configured:
        print(f"cap:          {stats.max_bytes} bytes, {spool.policy} when full")
    else:
        print("cap:          unknown: the config does not validate (`millgate config validate`)")
    print(f"oldest:       {f'{age} s ago' if age is not None else '-'}")
    print(f"dead letters: {stats.dead_letters}")
    for level, count in stats.by_priority.items():
        print(f"priority {level:>4}: {count} messages")
    for name, value in stats.counters.items():
        print(f"{name + ':':<26}{value}")
    return EXIT_OK


def _write_export(spool: Spool, out: TextIO, dead: bool) -> int:
    count = 0
    if dead:
        for letter in spool.dead_letters():
            record = {
                "topic": letter.topic,
                "ts": letter.ts,
                "qos": letter.qos,
                "tries": letter.tries,
                "reason": letter.reason,
                "dead_at": letter.dead_at,
                **_payload(letter.payload),
            }
            out.write(json.dumps(record) + "\n")
            count += 1
        return count
    for message in spool.messages():
        record = {
            "topic": message.topic,
            "ts": message.ts,
            "qos": message.qos,
            "priority": message.priority,
            "tries": message.tries,
            **({"properties": message.properties} if message.properties else {}),
            **_payload(message.payload),
        }
        out.write(json.dumps(record) + "\n")
        count += 1
    return count


def cmd_spool_export(args: argparse.Namespace) -> int:
    try:
        with closing(_open(args)[0]) as spool:
            if args.file == "-":
                count = _export_to_stdout(spool, args.dead_letters)
            else:
                count = _export_to_file(spool, Path(args.file), args.dead_letters)
    except SpoolError as exc:
        print(f"millgate spool: {exc}", file=sys.stderr)
        return EXIT_FAILED
    what = "dead letters" if args.dead_letters else "waiting messages"
    print(f"exported {count} {what} to {args.file}", file=sys.stderr)
    return EXIT_OK


def _export_to_stdout(spool: Spool, dead: bool) -> int:
    try:
        count = _write_export(spool, sys.stdout, dead)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader has gone (`| head`): gateway/cli.py ends quietly
    except OSError as exc:
        raise SpoolError(f"standard output: {exc.strerror or exc}; the export is incomplete") from None
    return count


def _export_to_file(spool: Spool, file: Path, dead: bool) -> int:
    """Export into FILE, which appears only once whole and on disk (gateway/atomic_file.written_whole):
    a full disk or a Ctrl-C leaves no cut export under FILE (and an earlier one there as it was)."""
    try:
        with written_whole(file) as sink:
            out = io.TextIOWrapper(sink, encoding="utf-8")
            count = _write_export(spool, out, dead)
            out.flush()
            out.detach()  # written_whole syncs and closes the file itself
    except OSError as exc:
        raise SpoolError(f"{file}: {exc.strerror or exc}; nothing exported") from None
    return count


def cmd_spool_purge(args: argparse.Namespace) -> int:
    if args.topic is None and not args.dead_letters:
        print("millgate spool purge: say what to purge: --topic PREFIX, or --dead-letters", file=sys.stderr)
        return EXIT_INVALID
    try:
        with closing(_open(args)[0]) as spool:
            count = spool.purge_dead_letters(args.topic or "") if args.dead_letters else spool.purge(args.topic)
    except SpoolError as exc:
        print(f"millgate spool: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.dead_letters:
        which = f" whose topic starts with {args.topic!r}" if args.topic else ""
        print(f"purged {count} dead letters{which}")
    else:
        print(f"purged {count} waiting messages whose topic starts with {args.topic!r} (counted as purged.operator)")
    return EXIT_OK


def add_spool_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    spool = verbs.add_parser("spool", help="inspect, export or purge the cloud spool", parents=[common])
    actions = spool.add_subparsers(dest="spool_verb", required=True, metavar="ACTION")

    stats = actions.add_parser("stats", help="depth, oldest message, dead letters, drop counters", parents=[common])
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.set_defaults(handler=cmd_spool_stats)

    export = actions.add_parser("export", help="write waiting messages as JSON Lines", parents=[common])
    export.add_argument("file", metavar="FILE", help="where to write ('-': stdout)")
    export.add_argument("--dead-letters", action="store_true", help="export the dead letters instead")
    export.set_defaults(handler=cmd_spool_export)

    purge = actions.add_parser(
        "purge", help="delete waiting messages by topic prefix, or dead letters", parents=[common]
    )
    purge.add_argument("--topic", default=None, metavar="PREFIX", help="topic prefix, e.g. plant/line1/")
    purge.add_argument(
        "--dead-letters", action="store_true", help="delete dead letters instead (all, or those under --topic)"
    )
    purge.set_defaults(handler=cmd_spool_purge)
