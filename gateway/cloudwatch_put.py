"""The short-lived child that talks to CloudWatch Logs with boto3 (`python -m gateway.cloudwatch_put`):
reads one request (log group, streams with their events) as JSON on stdin, creates the group and
streams it needs, sends every stream's events in order in PutLogEvents batches, writes per stream how
many events are done with as JSON on stdout, and exits, so boto3 is never resident.

It reads no config and no log file; gateway/cloudwatch_ship.py decides what to send and when.
"""

from __future__ import annotations

import contextlib
import json
import sys
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


def send(request: dict[str, Any]) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    client = _client(request)
    group = request["log_group"]
    done: dict[str, int] = {}
    rejected = 0
    error = None
    try:
        for stream, raw in request["streams"].items():
            done[stream] = 0
            for batch in batches(LogEvent(int(t), str(m)) for t, m in raw):
                info = _put(client, group, stream, batch).get("rejectedLogEventsInfo") or {}
                # too old / too new / expired events are refused for good: done with them as well
                rejected += len(info)
                done[stream] += len(batch)
    except (BotoCoreError, ClientError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"done": done, "rejected_batches": rejected, "error": error}


def main() -> int:
    request = json.load(sys.stdin)
    result = send(request)
    json.dump(result, sys.stdout)
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
