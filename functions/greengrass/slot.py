"""One Greengrass v1 worker as the core's v1 API knows it: its token and function, the work handed to it
and the results it owes. The dispatcher decides which worker runs what; a slot only carries it, and
knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
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
    """The worker was stopped, or replaced by a new process, while it waited for work."""


class WorkerSlot:
    """One v1 worker as the API knows it: its token, its function, the work handed to it and the
    results it owes. The dispatcher decides which worker runs what; the slot only carries it.

    Work waits in the mailbox only until a poll (GET /work) takes it; a poll that goes away first (its
    worker died) is withdrawn, and an item it took but could not deliver is given back, first in line."""

    def __init__(self, function: str, arn: str, token: str):
        self.function = function
        self.arn = arn
        self.token = token
        self.worker_id = uuid.uuid4().hex[:16]
        self.pid: int | None = None
        self.state = "Starting"  # the v1 health API's WorkerState
        self.initialized: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self.init_failure: str | None = None  # the last import report's error, until one succeeds
        # done when the current process reports that its handler could not load (work waiting is moot)
        self.load_failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.retired = False
        # bounded by the dispatcher: one item per invocation in flight, withdrawn when it gives up
        self._mailbox: deque[WorkItem] = deque()
        self._polls: deque[asyncio.Future[WorkItem]] = deque()  # GET /work requests waiting, oldest first
        self._results: dict[str, asyncio.Future[WorkResult]] = {}

    @property
    def polling(self) -> bool:
        """Whether a poll of this worker waits for work now."""
        return any(not poll.done() for poll in self._polls)

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
        self._deliver(item, first=False)
        return result

    def give_back(self, item: WorkItem) -> None:
        """A poll took `item` but its worker never got it (the connection was gone): next in line, if
        the dispatcher still waits for its result."""
        if item.invocation_id in self._results:
            self._deliver(item, first=True)

    def _deliver(self, item: WorkItem, first: bool) -> None:
        while self._polls:
            poll = self._polls.popleft()
            if not poll.done():
                poll.set_result(item)
                return
        if first:
            self._mailbox.appendleft(item)
        else:
            self._mailbox.append(item)

    def abandon(self, invocation_id: str) -> bool:
        """The dispatcher gave up on it (timeout, worker gone): never hand it out, drop a late result.
        Whether it was still waiting in the mailbox, i.e. no worker had taken it."""
        if self._results.pop(invocation_id, None) is not None:
            for item in self._mailbox:
                if item.invocation_id == invocation_id:
                    self._mailbox.remove(item)
                    return True
        return False

    async def next_work(self) -> WorkItem:
        if self.retired:
            raise WorkerRetired
        self.state = "Waiting"
        if self._mailbox:
            self.state = "Working"
            return self._mailbox.popleft()
        poll: asyncio.Future[WorkItem] = asyncio.get_running_loop().create_future()
        self._polls.append(poll)
        try:
            item = await poll
        except asyncio.CancelledError:
            # the poll's connection went away; an item handed to it just before goes to the next one
            if poll.done() and not poll.cancelled() and poll.exception() is None:
                self.give_back(poll.result())
            else:
                poll.cancel()
            raise
        finally:
            if poll in self._polls:
                self._polls.remove(poll)
        self.state = "Working"
        return item

    def retire_polls(self) -> None:
        """Answer every waiting poll WorkerRetired (its worker was replaced, or stopped)."""
        polls, self._polls = self._polls, deque()
        for poll in polls:
            if not poll.done():
                poll.set_exception(WorkerRetired())

    def retire(self) -> None:
        """The worker was stopped: its polls, waiting or to come, are answered WorkerRetired."""
        self.retired = True
        self.retire_polls()

    def complete(self, invocation_id: str, result: WorkResult) -> bool:
        future = self._results.pop(invocation_id, None)
        self.state = "Waiting"
        if future is None or future.done():
            return False
        future.set_result(result)
        return True

    def mark_started(self, pid: int) -> None:
        """A worker process reports in before its import, which a long-lived function's loop may never
        end: it is this slot's worker from now on. A new process (supervisord restarted a long-lived
        worker) retires the polls the old one left, and the old one's import report no longer holds."""
        if self.pid is not None and pid != self.pid:
            self.retire_polls()
        self.pid = pid
        self.state = "Starting"
        self.init_failure = None
        if self.load_failed.done():
            self.load_failed = asyncio.get_running_loop().create_future()

    def mark_initialized(self, success: bool, response: str, pid: int | None = None) -> None:
        """The worker's import report (PUT /initialized), or a poll's implied one. A report from a new
        process (supervisord restarted a long-lived worker) retires the polls left by the old one."""
        if pid is not None:
            if self.pid is not None and pid != self.pid:
                self.retire_polls()
            self.pid = pid
        if not self.initialized.done():
            self.initialized.set_result((success, response))
        if success:
            self.init_failure = None
            if self.load_failed.done():
                self.load_failed = asyncio.get_running_loop().create_future()
            if self.state in ("Starting", "FailedInitialization"):
                self.state = "Initialized"
        else:
            self.init_failure = response or "the handler module did not load"
            self.state = "FailedInitialization"
            if not self.load_failed.done():
                self.load_failed.set_result(None)
