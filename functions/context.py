"""The `context` a handler receives: the Greengrass v1 / Lambda shape (function name and ARN,
request id, client_context.custom['subject'] = the topic the message came on), plus the time left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClientContext:
    custom: dict[str, Any] = field(default_factory=dict)
    client: Any = None
    env: Any = None


@dataclass
class Context:
    function_name: str
    function_version: str
    invoked_function_arn: str
    aws_request_id: str
    memory_limit_in_mb: int
    client_context: ClientContext
    deadline: float
    identity: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self.deadline - time.monotonic()) * 1000), 0)


def function_arn(thing_name: str, function: str, version: str) -> str:
    """A Lambda-style ARN for a local function; region and account are not known on the gateway."""
    return f"arn:aws:lambda:local:000000000000:function:{thing_name}-{function}:{version}"
