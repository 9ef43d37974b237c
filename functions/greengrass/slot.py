"""One Greengrass v1 worker as the core's v1 API knows it: its token and function, the work handed to it
and the results it owes. The dispatcher decides which worker runs what; a slot only carries it, and
knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

from gateway.greengrass.arns import ArnError, parse_function_arn


@dataclass(frozen=True)
class WorkItem:
    invocation_id: str
    payload: bytes
    client_context: str  # base64 JSON, as X-Amz-Client-Context carries it


@dataclass(frozen=True)
class WorkResult:
    payload: bytes
    function_error: str = ""  # "" | "Handled" | "Unhandled"
    worker_exiting: bool = False  # the worker leaves after this result (over its memory limit)


def failed(kind: str, message: str) -> WorkResult:
    return WorkResult(json.dumps({"errorMessage": message}).encode(), kind)


class WorkerRetired(Exception):
    """The worker was stopped while it waited for work."""


class WorkerSlot:
    """One v1 worker as the API knows it: its token, its function, the work handed to it and the
    results it owes. The dispatcher decides which worker runs what; the slot only carries it."""

    def __init__(self, function: str, arn: str, token: str):
        self.function = function
        self.arn = arn
        self.token = token
        self.worker_id = uuid.uuid4().hex[:16]
        self.pid: int | None = None
        self.state = "Starting"  # the v1 health API's WorkerState
        self.initialized: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self.retired = asyncio.Event()
        self._mailbox: asyncio.Queue[WorkItem] = asyncio.Queue()
        self._results: dict[str, asyncio.Future[WorkResult]] = {}
        self._abandoned: set[str] = set()

    def owns(self, arn: str) -> bool:
        """Whether `arn` names this worker's function (qualified or not)."""
        if arn == self.arn:
            return True
        try:
            return parse_function_arn(arn).unqualified == parse_function_arn(self.arn).unqualified
        except ArnError:
            return False

    def submit(self, item: WorkItem) -> asyncio.Future[WorkResult]:
        result: asyncio.Future[WorkResult] = asyncio.get_running_loop().create_future()
        self._results[item.invocation_id] = result
        self._mailbox.put_nowait(item)
        return result

    def abandon(self, invocation_id: str) -> None:
        """The dispatcher gave up on it (timeout, worker gone): never hand it out, drop a late result."""
        if self._results.pop(invocation_id, None) is not None:
            self._abandoned.add(invocation_id)

    async def next_work(self) -> WorkItem:
        self.state = "Waiting"
        while True:
            getter = asyncio.ensure_future(self._mailbox.get())
            retired = asyncio.ensure_future(self.retired.wait())
            await asyncio.wait({getter, retired}, return_when=asyncio.FIRST_COMPLETED)
            retired.cancel()
            if not getter.done():
                getter.cancel()
                raise WorkerRetired
            item = getter.result()
            if item.invocation_id in self._abandoned:
                self._abandoned.discard(item.invocation_id)
                continue
            self.state = "Working"
            return item

    def complete(self, invocation_id: str, result: WorkResult) -> bool:
        self._abandoned.discard(invocation_id)
        future = self._results.pop(invocation_id, None)
        self.state = "Waiting"
        if future is None or future.done():
            return False
        future.set_result(result)
        return True

    def mark_initialized(self, success: bool, response: str) -> None:
        if not self.initialized.done():
            self.initialized.set_result((success, response))
        if self.state == "Starting":
            self.state = "Initialized" if success else "FailedInitialization"
