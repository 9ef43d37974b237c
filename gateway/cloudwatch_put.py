"""The short-lived child that talks to CloudWatch Logs with boto3 (`python -m gateway.cloudwatch_put`):
reads one request (log group, streams with their events) as JSON on stdin, creates the group and
streams it needs, sends every stream's events in order in PutLogEvents batches, and exits, so boto3 is
never resident. After each batch CloudWatch answered it writes one JSON line on stdout (the stream, how
many events are done with, how many of those CloudWatch refused), so a parent that kills it half-way
still knows what went; a last line carries the error that stopped it, if one did.

It reads no config and no log file; gateway/cloudwatch_ship.py decides what to send and when.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from gateway.cloudwatch_batch import LogEvent, batches


def _client(request: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    timeout = float(request.get("timeout_s", 10))
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client(
        "logs", region_name=request.get("region"), endpoint_url=request.get("endpoint_url"), config=config
    )


def _put(client: Any, group: str, stream: str, batch: list[LogEvent]) -> dict[str, Any]:
    """One PutLogEvents; the group and stream are created the first time they are missing (a new
    gateway, a new component, or a group an operator deleted)."""
    events = [{"timestamp": e.timestamp_ms, "message": e.message} for e in batch]
    try:
        return dict(client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events))
    except client.exceptions.ResourceNotFoundException:
        pass
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_group(logGroupName=group)
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_stream(logGroupName=group, logStreamName=stream)
    return dict(client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events))


def rejected_count(info: dict[str, Any], size: int) -> int:
    """How many of a batch of `size` events PutLogEvents' rejectedLogEventsInfo refuses: the too old and
    the expired up to their (exclusive) end index, the too new from their (inclusive) start index.
    https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_RejectedLogEventsInfo.html"""
    old_end = min(size, max(int(info.get("tooOldLogEventEndIndex", 0)), int(info.get("expiredLogEventEndIndex", 0))))
    new_start = max(old_end, min(size, int(info.get("tooNewLogEventStartIndex", size))))
    return old_end + size - new_start


def send(request: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> str | None:
    """Send every stream's events, `report`ing each batch as CloudWatch answers it; the error that
    stopped it, or None."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = _client(request)
    group = request["log_group"]
    try:
        for stream, raw in request["streams"].items():
            for batch in batches(LogEvent(int(t), str(m)) for t, m in raw):
                info = _put(client, group, stream, batch).get("rejectedLogEventsInfo") or {}
                # too old / too new / expired events are refused for good: done with them as well,
                # and counted apart so the parent can say so
                report({"stream": stream, "done": len(batch), "rejected": rejected_count(info, len(batch))})
    except (BotoCoreError, ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _write_line(item: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()  # a pipe is block-buffered: the parent must see each line before a kill


def main() -> int:
    request = json.load(sys.stdin)
    error = send(request, _write_line)
    _write_line({"error": error})
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
