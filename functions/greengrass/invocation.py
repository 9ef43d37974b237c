"""Calling a Greengrass v1 handler as the v1 Python runtime did (contract section 4): the event decoded
per ENCODING_TYPE, the v1 `context`, the result encoded back, an exception reported as a Handled error.
It knows nothing of HTTP or the broker.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Handler = Callable[[Any, Any], Any]


class ClientContext:
    """`context.client_context`: `custom` is the dict the caller (or the router) sent; `custom['subject']`
    is the topic a routed message came on."""

    def __init__(self, client: Any = None, custom: dict[str, Any] | None = None, env: Any = None):
        self.client = client
        self.custom = custom if custom is not None else {}
        self.env = env

    @classmethod
    def decode(cls, encoded: str) -> ClientContext:
        try:
            document = json.loads(base64.b64decode(encoded)) if encoded else {}
        except (ValueError, binascii.Error):
            document = {}
        if not isinstance(document, dict):
            document = {}
        custom = document.get("custom")
        return cls(document.get("client"), custom if isinstance(custom, dict) else {}, document.get("env"))


@dataclass
class LambdaContext:
    function_name: str
    function_version: str
    invoked_function_arn: str
    aws_request_id: str
    client_context: ClientContext
    memory_limit_in_mb: int
    deadline: float
    identity: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self.deadline - time.monotonic()) * 1000), 0)


@dataclass(frozen=True)
class FunctionSide:
    """Who this runtime runs, from the v1 environment."""

    arn: str
    name: str
    qualifier: str
    encoding: str  # "json" | "binary"
    memory_mb: int
    timeout_s: float


def decode_event(payload: bytes, encoding: str) -> Any:
    if encoding == "binary":
        return payload
    if not payload:
        return {}
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload  # not JSON after all: the handler gets the bytes rather than nothing


def encode_result(result: Any, encoding: str) -> bytes:
    if encoding == "binary":
        if result is None:
            return b""
        if isinstance(result, (bytes, bytearray)):
            return bytes(result)
        if isinstance(result, str):
            return result.encode("utf-8")
    return json.dumps(result).encode("utf-8")


@dataclass(frozen=True)
class Outcome:
    payload: bytes
    error: str | None = None  # errorMessage when the handler raised
    memory_error: bool = False


def call(handler: Handler, side: FunctionSide, invocation_id: str, payload: bytes, client_context: str) -> Outcome:
    context = LambdaContext(
        function_name=side.name,
        function_version=side.qualifier,
        invoked_function_arn=side.arn,
        aws_request_id=invocation_id,
        client_context=ClientContext.decode(client_context),
        memory_limit_in_mb=side.memory_mb,
        deadline=time.monotonic() + side.timeout_s,
    )
    try:
        return Outcome(encode_result(handler(decode_event(payload, side.encoding), context), side.encoding))
    except Exception as exc:
        traceback.print_exc()
        return Outcome(b"", str(exc), isinstance(exc, MemoryError))
