"""Loading a function's handler and calling it the Greengrass v1 way: the event decoded from JSON where
the payload is JSON and left as bytes otherwise, a Lambda-style context, the result made JSON-safe.
Shared by the on-demand worker and the long-lived runner; it knows nothing of pipes or the broker.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.context import ClientContext, Context, function_arn

Handler = Callable[[Any, Context], Any]


@dataclass(frozen=True)
class FunctionIdentity:
    name: str
    version: str
    thing_name: str
    memory_mb: int

    @property
    def arn(self) -> str:
        return function_arn(self.thing_name, self.name, self.version)


def load_handler(code_dir: Path, handler: str) -> Handler:
    """Import the handler's module (its module-level code runs now, once) and return the callable."""
    import functions.sdk  # noqa: F401  - the SDK first, so user code cannot shadow `functions`

    module_name, _, attribute = handler.rpartition(".")
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    module = importlib.import_module(module_name)
    found = getattr(module, attribute, None)
    if not callable(found):
        raise AttributeError(f"{handler}: module {module_name!r} has no callable {attribute!r}")
    return found  # type: ignore[no-any-return]


def decode_event(payload: bytes) -> Any:
    """JSON where the payload is JSON (empty -> {}), raw bytes otherwise."""
    if not payload:
        return {}
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload


def json_safe(result: Any) -> Any:
    if isinstance(result, bytes):
        return result.decode("utf-8", errors="backslashreplace")
    try:
        json.dumps(result)
        return result
    except (TypeError, ValueError):
        return repr(result)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    memory_error: bool = False  # by type: str(MemoryError()) is empty


def call_handler(
    handler: Handler, identity: FunctionIdentity, request_id: str, topic: str, payload: bytes, timeout_s: float
) -> Outcome:
    context = Context(
        function_name=identity.name,
        function_version=identity.version,
        invoked_function_arn=identity.arn,
        aws_request_id=request_id,
        memory_limit_in_mb=identity.memory_mb,
        client_context=ClientContext(custom={"subject": topic}),
        deadline=time.monotonic() + timeout_s,
    )
    try:
        return Outcome(True, json_safe(handler(decode_event(payload), context)))
    except Exception as exc:
        return Outcome(
            False,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            memory_error=isinstance(exc, MemoryError),
        )
