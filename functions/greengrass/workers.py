"""The two Greengrass v1 worker kinds the dispatcher runs: an on-demand worker the core spawns (the
v1 runtime under the function's uid, in a cgroup or under RLIMIT_AS, with its own token), and the one
worker of a long-lived v1 function, which supervisord starts and the core only hands work to.

Either way work is handed over through the worker's slot in the v1 API, not over a pipe.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import xmlrpc.client
from collections.abc import Callable, Coroutine
from typing import Any

from functions.dispatcher import WorkerCannotRun
from functions.greengrass.lambda_runtime import command as runtime_command
from functions.greengrass.service import GreengrassService
from functions.greengrass.slot import WorkerSlot, WorkItem, WorkResult
from functions.user_log import UserLog
from functions.worker_process import INIT_TIMEOUT_S, InvocationTimeout, WorkerFailed, WorkerProcess, WorkerSpec
from gateway.paths import GatewayPaths
from gateway.status import supervisor_proxy

log = logging.getLogger(__name__)


def _client_context(topic: str, given: str | None) -> str:
    """A direct invocation's client context as its caller sent it (empty stays empty: contract 3.1, the
    SDK's lambda.invoke passes ClientContext through); for a message routed to the function (None), what
    v1's router sent: custom.subject = the topic (contract 4.6)."""
    if given is not None:
        return given
    return base64.b64encode(json.dumps({"custom": {"subject": topic}}).encode()).decode()


def _answer(result: WorkResult) -> dict[str, Any]:
    """A v1 result in the dispatcher's terms, the raw payload kept for v1 callers."""
    try:
        value: Any = json.loads(result.payload) if result.payload else None
    except (ValueError, UnicodeDecodeError):
        value = result.payload.decode("utf-8", errors="backslashreplace")
    answer: dict[str, Any] = {"payload": base64.b64encode(result.payload).decode()}
    if result.worker_exiting:
        answer["worker_exiting"] = True
    if not result.function_error:
        return {**answer, "ok": True, "result": value}
    error = value.get("errorMessage") if isinstance(value, dict) else value
    return {**answer, "ok": False, "error": error if error is not None else result.function_error}


class NeverTaken(TimeoutError):
    """Timed out while still waiting for the worker to take it: the worker was not polling (a long-lived
    function's import still running, or its process being replaced), so no handler ran it."""


async def _hand_over(
    slot: WorkerSlot, item: WorkItem, timeout_s: float, gone: asyncio.Future[Any]
) -> WorkResult | None:
    """Give `item` to the worker and wait for its result; None if the worker went (`gone`) first.
    Raises TimeoutError, NeverTaken if no worker took it (the item is withdrawn either way)."""
    result = slot.submit(item)
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        if slot.abandon(item.invocation_id):
            raise NeverTaken from None
        raise
    if not result.done():
        slot.abandon(item.invocation_id)
        return None
    return result.result()


class V1WorkerProcess(WorkerProcess):
    """An on-demand v1 worker: `python -m functions.greengrass.lambda_runtime` as the function's uid."""

    def __init__(self, spec: WorkerSpec, user_log: UserLog, service: GreengrassService, timeout_s: float):
        super().__init__(spec, user_log)
        self.service = service
        self.timeout_s = timeout_s
        self.token = secrets.token_urlsafe(32)
        self.slot: WorkerSlot | None = None
        self._exited: asyncio.Future[int] | None = None

    def command(self) -> list[str]:
        spec = self.spec
        return runtime_command(spec.code_dir, spec.handler, spec.memory_mb, self.timeout_s, "--limits-from-stdin")

    async def start(self) -> None:
        self.slot = self.service.register(self.spec.function, self.token)
        try:
            await self.spawn(self.command(), {**self.spec.environment, "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token})
        except WorkerFailed:
            self.service.unregister(self.token)
            raise
        assert self.process is not None and self.process.stdin is not None
        self.slot.pid = self.process.pid
        self._exited = asyncio.ensure_future(self.process.wait())
        # the runtime caps its own address space unless the cgroup already caps its memory
        self.process.stdin.write(b"cgroup\n" if self.cgroup else b"rlimit\n")
        try:
            await self.process.stdin.drain()
            self.process.stdin.close()
        except (ConnectionError, BrokenPipeError):
            pass
        ready: set[asyncio.Future[Any]] = {self.slot.initialized, self._exited}
        try:
            async with asyncio.timeout(INIT_TIMEOUT_S):
                await asyncio.wait(ready, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            await self.kill()
            raise WorkerFailed(f"the handler module did not load within {INIT_TIMEOUT_S:.0f} s") from None
        if not self.slot.initialized.done():
            code = self.process.returncode
            await self.kill()
            raise WorkerFailed(f"the v1 runtime exited ({code}) before it was ready; see the function's log")
        success, response = self.slot.initialized.result()
        if not success:
            await self.kill()
            raise WorkerFailed(f"the handler could not load: {response}")

    async def invoke(
        self, request_id: str, topic: str, payload: bytes, timeout_s: float, client_context: str | None = None
    ) -> dict[str, Any]:
        assert self.slot is not None and self._exited is not None
        item = WorkItem(request_id, payload, _client_context(topic, client_context))
        try:
            result = await _hand_over(self.slot, item, timeout_s, self._exited)
        except TimeoutError:
            await self.kill()
            raise InvocationTimeout(f"Task timed out after {timeout_s:.2f} seconds") from None
        if result is None:
            code = self.process.returncode if self.process else None
            await self.kill()
            raise WorkerFailed(f"worker {self.pid} died (exit {code})")
        return _answer(result)

    async def stop(self) -> None:
        """Retire the slot (its long poll answers 410 and the runtime exits), wait briefly, else kill."""
        self.service.unregister(self.token)
        if self.process is not None and self.process.returncode is None:
            try:
                async with asyncio.timeout(2):
                    await self.process.wait()
            except TimeoutError:
                pass
        await self.kill()

    async def kill(self) -> None:
        self.service.unregister(self.token)
        await super().kill()
        if self._exited is not None and not self._exited.done():
            self._exited.cancel()


async def restart_program(paths: GatewayPaths, program: str) -> None:
    """Stop and start a supervisord program (the core runs as root, like supervisord's socket)."""

    def restart() -> None:
        proxy = supervisor_proxy(paths)
        try:
            proxy.supervisor.stopProcess(program, True)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != NOT_RUNNING:
                raise
        proxy.supervisor.startProcess(program, False)

    try:
        await asyncio.to_thread(restart)
    except (OSError, xmlrpc.client.Fault) as exc:
        log.error("event=restart-failed program=%s reason=%s", program, exc)
        return
    log.warning("event=restarted program=%s reason=invocation-timeout", program)


NOT_RUNNING = 70  # supervisor.xmlrpc.Faults.NOT_RUNNING


class PinnedV1Worker:
    """The single worker of a long-lived v1 function: supervisord runs it (`fn-<name>`), it proves
    itself with the token derived for it, and the dispatcher never kills it itself: past its timeout
    `restart` has supervisord replace it (its handler would run on otherwise, and take no more work).

    A message its worker never took (its import still running: v1 handed a worker work only once its
    module had loaded, and a module that loops forever at import never takes any) times out where it
    waits, and the worker is left alone: its import is not subject to the timeout (contract 4.2)."""

    def __init__(self, slot: WorkerSlot, restart: Callable[[], Coroutine[Any, Any, None]] | None = None):
        self.slot = slot
        self.idle_since = 0.0
        self._restart = restart
        self._restarting: asyncio.Task[None] | None = None
        self._not_taking: int | None = None  # the pid last logged as not taking its messages

    @property
    def pid(self) -> int | None:
        return self.slot.pid

    @property
    def alive(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def invoke(
        self, request_id: str, topic: str, payload: bytes, timeout_s: float, client_context: str | None = None
    ) -> dict[str, Any]:
        failure = self.slot.init_failure
        if failure is not None and not self.slot.polling:
            # its handler did not load (the service logged it): nothing would take the message
            raise WorkerCannotRun(f"function cannot run: the handler could not load: {failure}")
        item = WorkItem(request_id, payload, _client_context(topic, client_context))
        try:
            result = await _hand_over(self.slot, item, timeout_s, self.slot.load_failed)
        except NeverTaken:
            self._log_not_taking()
            raise InvocationTimeout(f"Task timed out after {timeout_s:.2f} seconds") from None
        except TimeoutError:
            self._replace()
            raise InvocationTimeout(f"Task timed out after {timeout_s:.2f} seconds") from None
        if result is None:  # its import failed while the message waited for it
            raise WorkerCannotRun(f"function cannot run: the handler could not load: {self.slot.init_failure}")
        return _answer(result)

    def _log_not_taking(self) -> None:
        if self._not_taking == self.slot.pid:
            return
        self._not_taking = self.slot.pid
        log.warning(
            "function=%s event=message-not-taken pid=%s worker_state=%s reason=its worker is not polling for work "
            "(an import that has not returned, or a process being replaced); the worker is left running",
            self.slot.function,
            self.slot.pid,
            self.slot.state,
        )

    def _replace(self) -> None:
        """Restart the worker in the background: the caller hears of the timeout now, and work handed
        to the slot meanwhile waits there for the new worker."""
        if self._restart is None or (self._restarting is not None and not self._restarting.done()):
            return
        self._restarting = asyncio.create_task(self._restart())

    async def kill(self) -> None:
        return None

    async def stop(self) -> None:
        return None
