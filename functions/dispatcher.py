"""The on-demand side of the function runtime, run inside the core: per function, messages routed to it
(and direct invocations) go into a bounded queue and are handed to a pool of warm workers that grows
with the backlog up to max_concurrency and shrinks when idle. It never runs user code itself.

A deployment that changes only the function swaps its version in place (FunctionPool.reconfigure):
the queue and the broker connection stay, the old version's workers finish what they hold and retire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from functions.function_stats import FunctionStats
from functions.user_log import UserLog
from functions.worker_process import InvocationTimeout, WorkerFailed, WorkerProcess, WorkerSpec
from gateway.backoff import Backoff
from gateway.mqtt import LocalMqtt, MqttError, Received

if TYPE_CHECKING:
    from gateway.config import Function

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 1.0


Answer = dict[str, Any]  # {"result", "function_error": None|"Handled"|"Unhandled", "error"[, "payload"]}


@dataclass(frozen=True)
class Invocation:
    request_id: str
    topic: str
    payload: bytes
    reply_to: str | None
    enqueued_at: float
    client_context: str | None = None  # Greengrass v1: the caller's base64 client context, passed through
    on_answer: Callable[[Answer], None] | None = None  # an invoker in this process, instead of reply_to
    delivery: Received | None = None  # the broker's message, acknowledged only once it has been handled


class Worker(Protocol):
    """What the pool needs of a worker: the native pipe worker and the Greengrass v1 kinds alike."""

    idle_since: float

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    async def start(self) -> None: ...

    async def invoke(
        self, request_id: str, topic: str, payload: bytes, timeout_s: float, client_context: str | None = None
    ) -> dict[str, Any]: ...

    async def kill(self) -> None: ...

    async def stop(self) -> None: ...


class WorkerStartDeferred(WorkerFailed):
    """No worker is started now: the last start failed a moment ago (see FunctionPool._take_worker)."""


class WorkerCannotRun(WorkerFailed):
    """The worker cannot take work now (its handler did not load); said once, where it was found out."""


@dataclass(frozen=True)
class ResidentWorker:
    """What a long-lived function's pool says in its heartbeat of the one worker supervisord runs for
    it: that worker's pid once known, and why it cannot take work, if it cannot."""

    pid: int | None
    problem: str | None


class FunctionPool:
    """One on-demand function: its queue, its workers, its statistics."""

    def __init__(
        self,
        function: Function,
        spec: WorkerSpec,
        user_log: UserLog,
        problems: list[str],
        new_worker: Callable[[], Worker] | None = None,
    ):
        self.function = function
        self.spec = spec
        self.user_log = user_log
        self.problems = problems
        self.new_worker: Callable[[], Worker] = new_worker or (lambda: WorkerProcess(self.spec, self.user_log))
        # bounded by function.queue_size in _accept, so a new version can change the bound in place
        self.queue: asyncio.Queue[Invocation] = asyncio.Queue()
        self.stats = FunctionStats()
        self.idle: list[Worker] = []
        self.busy: set[Worker] = set()
        self._stopping: set[Worker] = set()  # idle too long, being stopped by the reaper
        self.mqtt: LocalMqtt | None = None
        self._slots = asyncio.Semaphore(function.max_concurrency)
        self._accepting: set[asyncio.Task[None]] = set()
        self.fingerprint = ""  # the deployed version's config slice (gateway/deploy_plan.py), in heartbeats
        self._generation = 0  # a worker started before the last reconfigure retires after its message
        # a worker that cannot start (its mounts refused, its code gone) is not started again for
        # every message: the messages meanwhile get the same error, and the next try waits longer
        self._start_backoff = Backoff(initial_s=5.0, cap_s=60.0)
        self._start_refused: tuple[float, str] | None = None  # (retry after, monotonic; why)
        # a long-lived function's worker, which supervisord runs as fn-<name>: the heartbeat under that
        # name is this pool's, so it carries that worker's pid and problem (gateway/deploy_apply.py waits on it)
        self.resident: Callable[[], ResidentWorker] | None = None

    async def reconfigure(self, function: Function, spec: WorkerSpec, problems: list[str], fingerprint: str) -> None:
        """Run a new version of this (native) function from now on: new messages go to workers of the
        new version; idle workers of the old one stop now, busy ones once their message is answered.
        The queue and the broker connection stay, so nothing queued or in flight is lost."""
        self.function, self.spec, self.problems, self.fingerprint = function, spec, problems, fingerprint
        self._generation += 1
        self._slots = asyncio.Semaphore(function.max_concurrency)  # the old one's holders release the old one
        self._start_backoff.reset()  # the new version may well start
        self._start_refused = None
        self.user_log.set_cap(int(function.log_max_bytes))
        retired, self.idle = self.idle, []
        log.info(
            "function=%s event=reconfigured version=%s retiring_idle=%d retiring_busy=%d",
            function.name,
            spec.version,
            len(retired),
            len(self.busy),
        )
        await asyncio.gather(*(w.stop() for w in retired), return_exceptions=True)

    def follow_limits(self, timeout_s: float, queue_size: int) -> None:
        """A long-lived function's worker restarted with new settings (a deployment restarts fn-<name>,
        not the core): time and bound its messages by them from now on."""
        if (timeout_s, queue_size) == (self.function.timeout_s, self.function.queue_size):
            return
        log.info(
            "function=%s event=limits-followed timeout_s=%g queue_size=%d", self.function.name, timeout_s, queue_size
        )
        self.function = self.function.model_copy(update={"timeout_s": timeout_s, "queue_size": queue_size})

    def status(self) -> dict[str, Any]:
        problems = list(self.problems)
        resident = self.resident() if self.resident is not None else None
        if resident is not None and resident.problem is not None:
            problems.append(resident.problem)
        return {
            **({"pid": resident.pid} if resident is not None and resident.pid is not None else {}),
            "function_state": "failed" if problems else "ready",
            "fingerprint": self.fingerprint,
            "problems": problems,
            "lifecycle": self.function.lifecycle,
            "workers": len(self.idle) + len(self.busy),
            "busy": len(self.busy),
            "queue_depth": self.queue.qsize(),
            "invocations": self.stats.invocations,
            "errors": self.stats.errors,
            "timeouts": self.stats.timeouts,
            "rejected": self.stats.rejected,
            "p50_ms": self.stats.percentile(0.5),
            "p99_ms": self.stats.percentile(0.99),
        }

    async def on_message(self, message: Received) -> None:
        invocation = Invocation(
            uuid.uuid4().hex,
            message.topic,
            message.payload,
            message.response_topic,
            time.monotonic(),
            delivery=message,
        )
        await self._accept(invocation)

    def _settle(self, invocation: Invocation) -> None:
        """Acknowledge the message to the broker: until then a restart of this process (a deployment, a
        crash) makes the broker deliver it again instead of losing it."""
        if invocation.delivery is not None and self.mqtt is not None:
            self.mqtt.ack(invocation.delivery)

    def submit(
        self, topic: str, payload: bytes, client_context: str | None = None, wait: bool = True
    ) -> asyncio.Future[Answer] | None:
        """Invoke from inside this process (the Greengrass v1 API); with `wait`, a future of the answer."""
        future: asyncio.Future[Answer] | None = asyncio.get_running_loop().create_future() if wait else None

        def answered(answer: Answer) -> None:
            if future is not None and not future.done():
                future.set_result(answer)

        invocation = Invocation(
            uuid.uuid4().hex, topic, payload, None, time.monotonic(), client_context, answered if wait else None
        )
        task = asyncio.create_task(self._accept(invocation))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)
        return future

    async def _accept(self, invocation: Invocation) -> None:
        if self.problems:
            self.stats.errors += 1
            await self._reply(invocation, None, "Unhandled", f"function cannot run: {'; '.join(self.problems)}")
            self._settle(invocation)
            return
        if self.queue.qsize() < self.function.queue_size:
            self.queue.put_nowait(invocation)
        else:
            self.stats.rejected += 1
            if self.stats.rejected == 1 or self.stats.rejected % 1000 == 0:
                log.error(
                    "function=%s event=queue-full rejected=%d queue_size=%d topic=%s",
                    self.function.name,
                    self.stats.rejected,
                    self.function.queue_size,
                    invocation.topic,
                )
            await self._reply(invocation, None, "Unhandled", "input queue full: message rejected")
            self._settle(invocation)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                scheduler = tasks.create_task(self._schedule())
                reaper = tasks.create_task(self._reap_idle())
                await stop.wait()
                scheduler.cancel()
                reaper.cancel()
        finally:
            workers = [*self.idle, *self.busy, *self._stopping]
            await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
            self.user_log.close()

    async def _schedule(self) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                invocation = await self.queue.get()
                slots = self._slots  # a reconfigure replaces it; this invocation releases the one it took
                await slots.acquire()
                task = asyncio.create_task(self._invoke(invocation, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    async def _take_worker(self) -> tuple[Worker, int]:
        """A warm or new worker of the current version, and that version's generation."""
        while self.idle:
            worker = self.idle.pop()
            if worker.alive:
                return worker, self._generation
            await worker.kill()
        generation = self._generation
        if self._start_refused is not None and time.monotonic() < self._start_refused[0]:
            retry_in = self._start_refused[0] - time.monotonic()
            raise WorkerStartDeferred(f"{self._start_refused[1]} (next start in {retry_in:.1f} s)")
        worker = self.new_worker()
        try:
            await worker.start()
        except WorkerFailed as exc:
            delay = self._start_backoff.next_delay()
            self._start_refused = (time.monotonic() + delay, str(exc))
            log.error("function=%s event=worker-start-failed reason=%s retry_in_s=%.1f", self.function.name, exc, delay)
            raise
        self._start_backoff.reset()
        self._start_refused = None
        log.info(
            "function=%s event=worker-started pid=%s workers=%d",
            self.function.name,
            worker.pid,
            len(self.idle) + len(self.busy) + 1,
        )
        return worker, generation

    async def _invoke(self, invocation: Invocation, slots: asyncio.Semaphore) -> None:
        worker: Worker | None = None
        generation = self._generation
        started = time.monotonic()
        cancelled = False
        try:
            worker, generation = await self._take_worker()
            self.busy.add(worker)
            answer = await worker.invoke(
                invocation.request_id,
                invocation.topic,
                invocation.payload,
                self.function.timeout_s,
                client_context=invocation.client_context,
            )
            self.stats.invocations += 1
            if answer.get("ok"):
                await self._reply(invocation, answer.get("result"), None, None, answer.get("payload"))
            else:
                self.stats.errors += 1
                log.warning(
                    "function=%s event=handler-error request=%s error=%r",
                    self.function.name,
                    invocation.request_id,
                    answer.get("error"),
                )
                await self._reply(invocation, None, "Handled", answer.get("error"), answer.get("payload"))
            if answer.get("worker_exiting"):
                # over its memory limit the worker exits by itself: it must not get the next message
                log.warning(
                    "function=%s event=worker-exiting pid=%s reason=MemoryError", self.function.name, worker.pid
                )
                await worker.kill()
            self.stats.durations_ms.append((time.monotonic() - started) * 1000)
        except InvocationTimeout as exc:
            self.stats.invocations += 1
            self.stats.timeouts += 1
            log.error(
                "function=%s event=timeout request=%s pid=%s timeout_s=%g",
                self.function.name,
                invocation.request_id,
                worker.pid if worker else None,
                self.function.timeout_s,
            )
            await self._reply(invocation, None, "Unhandled", str(exc))
        except (WorkerStartDeferred, WorkerCannotRun) as exc:
            self.stats.errors += 1  # logged once, where it was found out
            await self._reply(invocation, None, "Unhandled", str(exc))
        except WorkerFailed as exc:
            self.stats.errors += 1
            log.error(
                "function=%s event=worker-failed request=%s reason=%s", self.function.name, invocation.request_id, exc
            )
            await self._reply(invocation, None, "Unhandled", str(exc))
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if worker is not None:
                self.busy.discard(worker)
                if worker.alive and generation == self._generation:
                    worker.idle_since = time.monotonic()
                    self.idle.append(worker)
                elif worker.alive and not cancelled:
                    log.info("function=%s event=worker-retired pid=%s", self.function.name, worker.pid)
                    await worker.stop()  # of a version deployed over since: its message answered, it goes
                elif not cancelled:
                    await worker.kill()  # gone: what it held (its cgroup, its v1 slot) goes with it
            slots.release()
            if not cancelled:  # a stop mid-invocation leaves it unacknowledged: the broker redelivers it
                self._settle(invocation)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = time.monotonic()
            if self.function.lifecycle == "long-lived":
                continue  # a long-lived function's one worker is supervisord's to keep, not the pool's
            # all taken out before the first stop: a message arriving meanwhile may take any idle worker
            expired = [w for w in self.idle if now - w.idle_since > self.function.idle_s]
            self.idle = [w for w in self.idle if w not in expired]
            self._stopping.update(expired)
            for worker in expired:
                log.info("function=%s event=worker-idle-stopped pid=%s", self.function.name, worker.pid)
                await worker.stop()
                self._stopping.discard(worker)

    async def _reply(
        self, invocation: Invocation, result: Any, function_error: str | None, error: Any, payload: str | None = None
    ) -> None:
        answer: Answer = {"result": result, "function_error": function_error, "error": error}
        if payload is not None:
            answer["payload"] = payload  # a Greengrass v1 worker's raw answer, base64
        if invocation.on_answer is not None:
            invocation.on_answer(answer)
            return
        if not invocation.reply_to or self.mqtt is None:
            return
        try:
            await self.mqtt.publish(invocation.reply_to, json.dumps(answer), qos=1)
        except (MqttError, TimeoutError) as exc:
            log.warning(
                "function=%s event=reply-not-sent topic=%s reason=%s", self.function.name, invocation.reply_to, exc
            )
