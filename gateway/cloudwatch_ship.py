"""The `logship` process: follows every system and function log under log_dir and ships new lines to
CloudWatch Logs ([logging.cloudwatch]): one log group per gateway, one stream per component
(system/<component>, user/<function>). Lines wait in a capped buffer while CloudWatch is unreachable;
what is saved across restarts is, per log, where the last line CloudWatch acknowledged ends, so lines
buffered during an outage are read again after a restart rather than skipped.

It never imports boto3: each flush runs `python -m gateway.cloudwatch_put` as a short-lived child, so
the 40 MB of boto3 is paid only while a batch is on its way. The child reports each batch CloudWatch
answered as it goes, so what went before a hung child was killed is not sent again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gateway.atomic_file import write_atomic
from gateway.backoff import Backoff
from gateway.cloudwatch_batch import EventBuffer, LogEvent, clip
from gateway.component_users import drop_from_environment
from gateway.config import CloudWatchSection
from gateway.config_loader import ConfigInvalid, load_config
from gateway.log_files import FollowedFile, Resume, line_time, log_sources
from gateway.logs import setup_logging
from gateway.paths import GatewayPaths

log = logging.getLogger("gateway.cloudwatch_ship")
COMPONENT = "logship"
OFFSETS = "logship-offsets.json"
CHILD_TIMEOUT_S = 120.0


def stream_name(component: str) -> str:
    return f"user/{component.removeprefix('fn-')}" if component.startswith("fn-") else f"system/{component}"


class Shipper:
    def __init__(self, paths: GatewayPaths, settings: CloudWatchSection, thing: str):
        self.paths = paths
        self.settings = settings
        self.log_group = settings.log_group.replace("{thing}", thing)
        self.buffer = EventBuffer(int(settings.buffer_max_bytes))
        paths.logship_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # `millgate run` made it, with its owner
        self.offsets_file = paths.logship_dir / OFFSETS
        self.files: dict[str, FollowedFile] = self._load_offsets()
        # per component, where its last acknowledged line ends: the only read position ever saved
        self.acknowledged: dict[str, dict[str, object]] = {
            name: {"path": str(f.path), "inode": f.inode, "position": f.position, "head": f.head}
            for name, f in self.files.items()
        }
        self.components: dict[str, str] = {}  # stream -> component
        self.backoff = Backoff(initial_s=settings.flush_interval_s, cap_s=max(300.0, settings.flush_interval_s))
        self.state = "starting"
        self.reported_dropped = 0
        self.sent = 0
        self.rejected = 0  # lines CloudWatch refused for good (too old, too new, expired): not sent
        self.rejecting = False

    def _load_offsets(self) -> dict[str, FollowedFile]:
        """Every log where its last acknowledged line ends (a log never acknowledged starts at 0)."""
        try:
            saved = json.loads(self.offsets_file.read_text())
            return {
                name: FollowedFile(Path(e["path"]), e["inode"], e["position"], str(e.get("head", "")))
                for name, e in saved.items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error(
                "event=offsets-unreadable file=%s reason=%s action=every log read again from its start",
                self.offsets_file,
                exc,
            )
            return {}

    def _save_offsets(self) -> None:
        write_atomic(self.offsets_file, json.dumps(self.acknowledged, sort_keys=True), 0o600)

    def collect(self) -> int:
        """Read every log's new lines into the buffer; returns how many."""
        count = 0
        now_ms = int(time.time() * 1000)
        for component, source in log_sources(self.paths.log_dir).items():
            tail = self.files.setdefault(component, FollowedFile(source.path))
            stream = stream_name(component)
            self.components[stream] = component
            for line, resume in tail.read_marked():
                stamp = line_time(line)
                self.buffer.add(stream, LogEvent(int(stamp * 1000) if stamp else now_ms, clip(line), resume))
                count += 1
        if self.buffer.dropped != self.reported_dropped:
            log.warning(
                "event=buffer-full dropped_total=%d max_bytes=%d action=lines dropped, oldest first",
                self.buffer.dropped,
                self.buffer.max_bytes,
            )
            self.reported_dropped = self.buffer.dropped
        return count

    def _acknowledge(self, stream: str, count: int) -> None:
        last = self.buffer.acknowledge(stream, count)
        component = self.components.get(stream)
        if last is None or component is None or not isinstance(last.mark, Resume):
            return
        self.acknowledged[component] = {
            "path": str(self.files[component].path),
            "inode": last.mark.inode,
            "position": last.mark.position,
            "head": last.mark.head,
        }

    def flush(self) -> bool:
        """Send what is buffered through a boto3 child; True when all of it went."""
        pending = self.buffer.pending()
        if not pending:
            return True
        request = {
            "log_group": self.log_group,
            "region": self.settings.region,
            "endpoint_url": self.settings.endpoint_url,
            "timeout_s": self.settings.request_timeout_s,
            "streams": {s: [[e.timestamp_ms, e.message] for e in events] for s, events in pending.items()},
        }
        reports, error = _run_child(request)
        done: dict[str, int] = {}
        rejected: dict[str, int] = {}
        for stream, count, refused in reports:
            done[stream] = done.get(stream, 0) + count
            rejected[stream] = rejected.get(stream, 0) + refused
        for stream, count in done.items():
            self._acknowledge(stream, count)
            self.sent += count - rejected[stream]
        if done:
            self._save_offsets()
        self._note_rejected({s: n for s, n in rejected.items() if n}, bool(done))
        self._set_state("failing" if error else "ok", error)
        return error is None

    def _note_rejected(self, rejected: dict[str, int], answered: bool) -> None:
        """Say once when CloudWatch starts refusing lines for good, and once when it takes them again."""
        self.rejected += sum(rejected.values())
        if rejected and not self.rejecting:
            log.warning(
                "event=lines-rejected group=%s streams=%s rejected_total=%d reason=stamped too old, too new or "
                "expired for CloudWatch action=skipped; check the gateway's clock and the logs' time zone",
                self.log_group,
                ",".join(f"{s}:{n}" for s, n in sorted(rejected.items())),
                self.rejected,
            )
        elif answered and not rejected and self.rejecting:
            log.info("event=lines-accepted-again group=%s rejected_total=%d", self.log_group, self.rejected)
        self.rejecting = bool(rejected) or (self.rejecting and not answered)

    def _set_state(self, state: str, error: str | None) -> None:
        if state == self.state:
            return
        self.state = state
        if error:
            log.error(
                "event=cloudwatch-unreachable group=%s buffered=%d reason=%s", self.log_group, len(self.buffer), error
            )
        else:
            log.info("event=cloudwatch-ok group=%s sent_total=%d", self.log_group, self.sent)


def _run_child(request: dict[str, Any]) -> tuple[list[tuple[str, int, int]], str | None]:
    """Run the boto3 child on `request`: (stream, events done with, of those rejected) for each batch it
    reported, even when it was killed half-way, and why it did not finish (None: it did)."""
    error = None
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "gateway.cloudwatch_put"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child:
            try:
                output, errors = child.communicate(json.dumps(request), timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                output, errors = child.communicate()  # what it wrote before, per subprocess's docs
                error = f"killed after {CHILD_TIMEOUT_S:.0f}s without finishing"
    except OSError as exc:
        return [], f"{type(exc).__name__}: {exc}"
    reports: list[tuple[str, int, int]] = []
    for line in output.splitlines():
        try:
            item = json.loads(line)
            if "stream" in item:
                reports.append((str(item["stream"]), int(item["done"]), int(item["rejected"])))
            elif item.get("error"):
                error = str(item["error"])
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a line cut short by the kill
    if error is None and child.returncode != 0:
        last_words = errors.strip().splitlines()
        error = last_words[-1] if last_words else f"exit {child.returncode}"
    return reports, error


def run(shipper: Shipper, stop: threading.Event) -> None:
    while not stop.is_set():
        shipper.collect()
        if shipper.flush():
            shipper.backoff.reset()
            delay = shipper.settings.flush_interval_s
        else:
            delay = shipper.backoff.next_delay()
        stop.wait(delay)
    shipper.collect()
    shipper.flush()  # one last try on the way out; what fails is read again on the next start


def main(argv: list[str] | None = None) -> int:
    drop_from_environment(os.environ)  # done already when started by supervisord (gateway/preload.py)
    parser = argparse.ArgumentParser(prog="millgate-logship")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        loaded = load_config(args.config)
    except ConfigInvalid as exc:
        print(f"{COMPONENT}: refusing to start on an invalid config:\n{exc}", file=sys.stderr)
        return 2
    config = loaded.gateway
    setup_logging(COMPONENT, config.logging.levels.get(COMPONENT, config.logging.level))
    settings = config.logging.cloudwatch
    if settings is None or not settings.enabled:
        log.info("event=not-started reason=[logging.cloudwatch] is absent or disabled")
        return 0
    paths = GatewayPaths.resolve(args.config, args.state, config.gateway.log_dir)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    shipper = Shipper(paths, settings, config.gateway.thing_name)
    log.info("event=starting group=%s log_dir=%s", shipper.log_group, paths.log_dir)
    run(shipper, stop)
    log.info(
        "event=stopped sent_total=%d rejected_total=%d buffered=%d", shipper.sent, shipper.rejected, len(shipper.buffer)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
